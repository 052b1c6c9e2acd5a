package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"upsize/internal/errcode"
	"upsize/internal/store"
)

const maxAdminBody = 64 << 10

// jsonFields reads a JSON object body (an empty body is an empty object) whose keys are all in allowed.
// Values stay raw so that each field's type is checked by name and a bad one is named in
// invalid_field (name); an unknown or repeated key is a bad field too.
func jsonFields(c *gin.Context, allowed ...string) (map[string]json.RawMessage, bool) {
	body, ok := readBody(c, maxAdminBody)
	if !ok {
		return nil, false
	}
	m, err := decodeObject(body)
	var dup duplicateKeyError
	switch {
	case errors.As(err, &dup):
		fail(c, errcode.InvalidField.With(dup.key))
		return nil, false
	case err != nil:
		fail(c, errcode.InvalidField.With("body"))
		return nil, false
	}
	names := make([]string, 0, len(m))
	for k := range m {
		if !slices.Contains(allowed, k) {
			names = append(names, k)
		}
	}
	if len(names) > 0 {
		sort.Strings(names)
		fail(c, errcode.InvalidField.With(names[0]))
		return nil, false
	}
	return m, true
}

func oneOf(raw json.RawMessage, allowed ...string) (string, bool) {
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	for _, a := range allowed {
		if s == a {
			return s, true
		}
	}
	return "", false
}

// MaxCredits bounds balances and costs (SPEC: whole numbers from 0 to 10^12), so that no sum of a
// balance and refunds can overflow Redis' 64-bit integers.
const MaxCredits = 1_000_000_000_000

// creditAmount accepts a JSON integer literal from 0 to MaxCredits (not 1.5, not "1").
func creditAmount(raw json.RawMessage) (int64, bool) {
	n, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
	return n, err == nil && n >= 0 && n <= MaxCredits
}

// userFields are the fields of POST /admin/users and PATCH /admin/users/{id}.
var userFields = []string{"plan", "premium", "billing", "credits"}

// userPatch validates the user fields present in m, in a fixed order.
func userPatch(c *gin.Context, m map[string]json.RawMessage) (store.UserPatch, bool) {
	var p store.UserPatch
	if raw, ok := m["plan"]; ok {
		v, ok := oneOf(raw, store.PlanFree, store.PlanPaid)
		if !ok {
			fail(c, errcode.InvalidField.With("plan"))
			return p, false
		}
		p.Plan = &v
	}
	if raw, ok := m["premium"]; ok {
		var v bool
		if json.Unmarshal(raw, &v) != nil || string(raw) == "null" {
			fail(c, errcode.InvalidField.With("premium"))
			return p, false
		}
		p.Premium = &v
	}
	if raw, ok := m["billing"]; ok {
		v, ok := oneOf(raw, store.BillingOK, store.BillingFailed)
		if !ok {
			fail(c, errcode.InvalidField.With("billing"))
			return p, false
		}
		p.Billing = &v
	}
	if raw, ok := m["credits"]; ok {
		v, ok := creditAmount(raw)
		if !ok {
			fail(c, errcode.InvalidField.With("credits"))
			return p, false
		}
		p.Credits = &v
	}
	return p, true
}

func handleCreateUser(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		m, ok := jsonFields(c, userFields...)
		if !ok {
			return
		}
		p, ok := userPatch(c, m)
		if !ok {
			return
		}
		u, err := s.CreateUser(c.Request.Context(), p)
		if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		c.JSON(http.StatusCreated, gin.H{"user": u})
	}
}

// pathUser parses the :id of an admin user route; an id that is not a number is an unknown user.
func pathUser(c *gin.Context) (int64, bool) {
	raw := c.Param("id")
	id, ok := parseID(raw)
	if !ok {
		fail(c, errcode.NoUser.With(raw))
	}
	return id, ok
}

// userResult answers the user, or its absence.
func userResult(c *gin.Context, u store.User, err error, status int) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		fail(c, errcode.NoUser.With(c.Param("id")))
	case err != nil:
		unavailable(c, errcode.ServiceUnavailable, err)
	default:
		c.JSON(status, gin.H{"user": u})
	}
}

func handleGetUser(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		if id, ok := pathUser(c); ok {
			u, err := s.GetUser(c.Request.Context(), id)
			userResult(c, u, err, http.StatusOK)
		}
	}
}

func handlePatchUser(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		id, ok := pathUser(c)
		if !ok {
			return
		}
		m, ok := jsonFields(c, userFields...)
		if !ok {
			return
		}
		p, ok := userPatch(c, m)
		if !ok {
			return
		}
		u, err := s.PatchUser(c.Request.Context(), id, p)
		userResult(c, u, err, http.StatusOK)
	}
}

func handleCreateAPIKey(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		id, ok := pathUser(c)
		if !ok {
			return
		}
		m, ok := jsonFields(c, "expiresAt")
		if !ok {
			return
		}
		var exp *time.Time
		if raw, ok := m["expiresAt"]; ok && string(raw) != "null" {
			var v string
			t, err := time.Time{}, json.Unmarshal(raw, &v)
			if err == nil {
				t, err = time.Parse(time.RFC3339, v)
			}
			if err != nil {
				fail(c, errcode.InvalidField.With("expiresAt"))
				return
			}
			exp = &t
		}
		k, err := s.CreateAPIKey(c.Request.Context(), id, exp)
		if errors.Is(err, store.ErrNotFound) {
			fail(c, errcode.NoUser.With(c.Param("id")))
			return
		} else if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		body := gin.H{"apiKey": k.Key, "userId": k.UserID, "expiresAt": nil}
		if k.ExpiresAt != nil {
			body["expiresAt"] = k.ExpiresAt.UTC().Format(time.RFC3339)
		}
		c.JSON(http.StatusCreated, body)
	}
}

func handleSetModel(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		m, ok := jsonFields(c, "model")
		if !ok {
			return
		}
		var model string
		if json.Unmarshal(m["model"], &model) != nil || model == "" || len(model) > 64 {
			fail(c, errcode.InvalidField.With("model"))
			return
		}
		// Any name is accepted: rule 10 decides at upsize time whether the workers know it.
		if err := s.SetModel(c.Request.Context(), model); err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		c.JSON(http.StatusOK, gin.H{"model": model})
	}
}

// handleDelete answers 204 once del has removed a setting.
func handleDelete(del func(context.Context) error) gin.HandlerFunc {
	return func(c *gin.Context) {
		if err := del(c.Request.Context()); err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		c.Status(http.StatusNoContent)
	}
}

// handleSetCosts replaces the cost table: {"2x": 1, "4x": 2, "8x": 4}, any scale may be absent.
func handleSetCosts(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		m, ok := jsonFields(c, "2x", "4x", "8x")
		if !ok {
			return
		}
		names := make([]string, 0, len(m))
		for k := range m {
			names = append(names, k)
		}
		sort.Strings(names)
		costs := map[string]int64{}
		for _, k := range names {
			n, ok := creditAmount(m[k])
			if !ok {
				fail(c, errcode.InvalidField.With(k))
				return
			}
			costs[k] = n
		}
		if err := s.SetCosts(c.Request.Context(), costs); err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		c.JSON(http.StatusOK, gin.H{"costs": costs})
	}
}

// handleGetModel answers the upsize model, or null when none is set.
func handleGetModel(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		st, err := s.GetSettings(c.Request.Context())
		if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		var model *string
		if st.Model != "" {
			model = &st.Model
		}
		c.JSON(http.StatusOK, gin.H{"model": model})
	}
}

// handleGetCosts answers the cost table as PUT takes it ({} when unset).
func handleGetCosts(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		st, err := s.GetSettings(c.Request.Context())
		if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		c.JSON(http.StatusOK, st.Costs)
	}
}

// handleWebhookSecret makes a new callback signing secret for the user and shows it, once.
func handleWebhookSecret(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		id, ok := pathUser(c)
		if !ok {
			return
		}
		secret, err := s.SetWebhookSecret(c.Request.Context(), id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			fail(c, errcode.NoUser.With(c.Param("id")))
		case err != nil:
			unavailable(c, errcode.ServiceUnavailable, err)
		default:
			c.JSON(http.StatusCreated, gin.H{"secret": secret})
		}
	}
}
