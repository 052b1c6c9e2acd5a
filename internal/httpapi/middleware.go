package httpapi

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"regexp"
	"time"

	"github.com/gin-gonic/gin"

	"upsize/internal/errcode"
	"upsize/internal/metrics"
	"upsize/internal/store"
)

// ctxKey is the type of this package's Gin context keys: no other package's key can collide with them.
type ctxKey int

// Gin context keys.
const (
	ctxUser      ctxKey = iota // store.User, set by apiKeyAuth
	ctxRequestID               // the request id, set by requestID
	ctxBadRID                  // true when X-Request-Id was malformed
	ctxReason                  // the error reason answered, for logs and metrics
	ctxErr                     // the error behind a 5xx, for the log
	ctxOutcome                 // canceled or failed, for the upsize metrics
	ctxBodyRead                // true once the body was read whole
)

func currentUser(c *gin.Context) store.User { return c.MustGet(ctxUser).(store.User) }

// currentUserID is the caller's user id, or 0 on admin routes.
func currentUserID(c *gin.Context) int64 {
	if u, ok := c.Get(ctxUser); ok {
		return u.(store.User).ID
	}
	return 0
}

// requestIDPattern is SPEC's request id: 1-128 characters of A-Z a-z 0-9 . _ : -
var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "req-" + hex.EncodeToString(b[:])
}

// requestID reads X-Request-Id (or makes one) and echoes it on every answer, errors included. A
// malformed id is remembered, not refused: rule 1 (authentication) answers before rule 2.
func requestID() gin.HandlerFunc {
	return func(c *gin.Context) {
		vals, sent := c.Request.Header["X-Request-Id"]
		switch {
		case !sent:
			id := newRequestID()
			c.Set(ctxRequestID, id)
			c.Header("X-Request-Id", id)
		case len(vals) == 1 && requestIDPattern.MatchString(vals[0]):
			c.Set(ctxRequestID, vals[0])
			c.Header("X-Request-Id", vals[0])
		default:
			c.Set(ctxBadRID, true)
		}
		c.Next()
	}
}

// apiKeyAuth is rule 1 for every /api endpoint.
func apiKeyAuth(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		key := c.GetHeader("X-Api-Key")
		if key == "" {
			fail(c, errcode.NotLoggedIn.E())
			return
		}
		u, err := s.Authenticate(c.Request.Context(), key, time.Now())
		switch {
		case errors.Is(err, store.ErrKeyUnknown), errors.Is(err, store.ErrNotFound):
			fail(c, errcode.WrongAPIKey.E())
		case errors.Is(err, store.ErrKeyExpired):
			fail(c, errcode.APIKeyExpired.E())
		case err != nil:
			unavailable(c, errcode.ServiceUnavailable, err)
		default:
			c.Set(ctxUser, u)
			c.Next()
		}
	}
}

// adminAuth checks "Authorization: Bearer <ADMIN_TOKEN>" in constant time. With no token configured
// nobody is admin.
func adminAuth(token string) gin.HandlerFunc {
	want := []byte("Bearer " + token)
	return func(c *gin.Context) {
		got := []byte(c.GetHeader("Authorization"))
		if token == "" || subtle.ConstantTimeCompare(got, want) != 1 {
			fail(c, errcode.InvalidAdminToken.E())
			return
		}
		c.Next()
	}
}

// adminAuthOrBasic is adminAuth that also takes the admin token as the password of HTTP Basic
// authentication (any user name), and asks a browser for it: asynqmon is a web page.
func adminAuthOrBasic(token string) gin.HandlerFunc {
	bearer := adminAuth(token)
	return func(c *gin.Context) {
		if _, pw, ok := c.Request.BasicAuth(); ok && token != "" && subtle.ConstantTimeCompare([]byte(pw), []byte(token)) == 1 {
			c.Next()
			return
		}
		c.Header("WWW-Authenticate", `Basic realm="upsize admin", charset="UTF-8"`)
		bearer(c)
	}
}

// accessLog writes one line per request. It never logs headers, so API keys and the admin token stay
// out of the logs.
func accessLog(log *slog.Logger) gin.HandlerFunc {
	return func(c *gin.Context) {
		start := time.Now()
		c.Next()
		attrs := []any{
			"method", c.Request.Method, "route", c.FullPath(), "status", c.Writer.Status(),
			"duration_ms", time.Since(start).Milliseconds(), "bytes", c.Writer.Size(),
		}
		if rid := c.GetString(ctxRequestID); rid != "" {
			attrs = append(attrs, "request_id", rid)
		}
		if u, ok := c.Get(ctxUser); ok {
			attrs = append(attrs, "user_id", u.(store.User).ID)
		}
		if r := c.GetString(ctxReason); r != "" {
			attrs = append(attrs, "reason", r)
		}
		level := slog.LevelInfo
		if err, ok := c.Get(ctxErr); ok {
			attrs = append(attrs, "err", err)
			level = slog.LevelError
		}
		log.Log(c.Request.Context(), level, "http", attrs...)
	}
}

// instrument records the duration of every request by route template (never the raw path: ids would
// make the label unbounded), method, status code and platform, and the number in flight. Every label
// value comes from a fixed set, whatever the client sends.
func instrument(m *metrics.API) gin.HandlerFunc {
	return func(c *gin.Context) {
		start := time.Now()
		m.HTTPInFlight.Inc()
		defer m.HTTPInFlight.Dec()
		c.Next()
		route := c.FullPath() // a route template of addRoutes, or "" when none matched
		if route == "" {
			route = "unmatched"
		}
		platform := c.GetHeader("X-Platform")
		switch {
		case platform == "":
			platform = "web"
		case !platforms[platform]:
			platform = "invalid"
		}
		m.HTTPDuration.WithLabelValues(route, metrics.Method(c.Request.Method), metrics.StatusCode(c.Writer.Status()), platform).
			Observe(time.Since(start).Seconds())
	}
}

// secureHeaders: no response may be sniffed into another type by a browser (image bytes included).
func secureHeaders() gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Header("X-Content-Type-Options", "nosniff")
		c.Next()
	}
}

// hasBody reports whether the request came with a body to read.
func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}

// bodyDeadline gives a request body timeout to arrive, whole: a client that trickles its body is cut off
// (408) instead of holding a connection and a buffer. The deadline is lifted once the body has been read,
// because the server's watch for a client hang-up (which cancels the request's context) reads under the
// same deadline, and an upsize may then wait far longer than timeout for its outcome.
func bodyDeadline(timeout time.Duration) gin.HandlerFunc {
	return func(c *gin.Context) {
		if hasBody(c.Request) {
			_ = http.NewResponseController(c.Writer).SetReadDeadline(time.Now().Add(timeout))
		}
		c.Next()
	}
}

// bodyRead marks the body as read whole and lifts its deadline.
func bodyRead(c *gin.Context) {
	c.Set(ctxBodyRead, true)
	_ = http.NewResponseController(c.Writer).SetReadDeadline(time.Time{})
}

// dropUnreadBody is for answers given before the body was read (a wrong key, a bad header): the body is
// not read at all. After a handler, net/http reads up to 256 KB of what is left to reuse the connection;
// the connection is closed instead, at once, so an unauthenticated client cannot hold it by trickling.
func dropUnreadBody(c *gin.Context) {
	if hasBody(c.Request) && !c.GetBool(ctxBodyRead) {
		c.Header("Connection", "close")
		_ = http.NewResponseController(c.Writer).SetReadDeadline(time.Now())
	}
}

// recovery turns a panic into a 500 envelope and logs it.
func recovery(log *slog.Logger) gin.HandlerFunc {
	return gin.CustomRecoveryWithWriter(nil, func(c *gin.Context, err any) {
		log.Error("panic", "route", c.FullPath(), "panic", err)
		fail(c, errcode.Internal.E())
	})
}
