// Package store keeps the service's metadata in Redis: users and their credits, hashed API keys,
// images, and the admin's settings (upsize model and credit costs). Request states and their atomic
// outcomes are the cancel registry's (package cancel).
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

var (
	ErrNotFound   = errors.New("store: not found")
	ErrKeyUnknown = errors.New("store: unknown API key")
	ErrKeyExpired = errors.New("store: API key expired")
)

// Plans and billing states.
const (
	PlanFree      = "free"
	PlanPaid      = "paid"
	BillingOK     = "ok"
	BillingFailed = "failed"
)

// Store is the Redis-backed metadata store.
type Store struct {
	rdb  redis.UniversalClient
	keys Keys
}

func New(rdb redis.UniversalClient, keys Keys) *Store { return &Store{rdb: rdb, keys: keys} }

// ---------- users ----------

// User is an account. Credits are the balance left after every reservation.
type User struct {
	ID      int64  `json:"id"`
	Plan    string `json:"plan"`
	Premium bool   `json:"premium"`
	Billing string `json:"billing"`
	Credits int64  `json:"credits"`
}

// UserPatch holds the fields to change; nil leaves a field as it is.
type UserPatch struct {
	Plan    *string
	Premium *bool
	Billing *string
	Credits *int64
}

func (p UserPatch) fields() []any {
	var f []any
	if p.Plan != nil {
		f = append(f, "plan", *p.Plan)
	}
	if p.Premium != nil {
		f = append(f, "premium", strconv.FormatBool(*p.Premium))
	}
	if p.Billing != nil {
		f = append(f, "billing", *p.Billing)
	}
	if p.Credits != nil {
		f = append(f, "credits", *p.Credits)
	}
	return f
}

// CreateUser allocates an id and stores the user. Unset fields default to a free plan, not premium,
// billing ok, no credits.
func (s *Store) CreateUser(ctx context.Context, p UserPatch) (User, error) {
	id, err := s.rdb.Incr(ctx, s.keys.UserSeq()).Result()
	if err != nil {
		return User{}, err
	}
	fields := append([]any{"plan", PlanFree, "premium", "false", "billing", BillingOK, "credits", 0}, p.fields()...)
	if err := s.rdb.HSet(ctx, s.keys.User(id), fields...).Err(); err != nil {
		return User{}, err
	}
	return s.GetUser(ctx, id)
}

// patchUser changes an existing user only: a PATCH of a missing id must not create it.
var patchUser = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return 1`)

func (s *Store) PatchUser(ctx context.Context, id int64, p UserPatch) (User, error) {
	ok, err := patchUser.Run(ctx, s.rdb, []string{s.keys.User(id)}, p.fields()...).Int()
	if err != nil {
		return User{}, err
	}
	if ok == 0 {
		return User{}, ErrNotFound
	}
	return s.GetUser(ctx, id)
}

func (s *Store) GetUser(ctx context.Context, id int64) (User, error) {
	m, err := s.rdb.HGetAll(ctx, s.keys.User(id)).Result()
	if err != nil {
		return User{}, err
	}
	if len(m) == 0 {
		return User{}, ErrNotFound
	}
	credits, _ := strconv.ParseInt(m["credits"], 10, 64)
	return User{ID: id, Plan: m["plan"], Premium: m["premium"] == "true", Billing: m["billing"], Credits: credits}, nil
}

// SetWebhookSecret makes a new secret for signing the user's completion callbacks (HMAC-SHA256) and
// returns it; the old one stops being used at once. ErrNotFound: no such user.
func (s *Store) SetWebhookSecret(ctx context.Context, userID int64) (string, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	secret := "whsec_" + base64.RawURLEncoding.EncodeToString(raw[:])
	// Kept as is, not hashed: signing needs it. Only the worker that signs reads it.
	ok, err := patchUser.Run(ctx, s.rdb, []string{s.keys.User(userID)}, "webhook_secret", secret).Int()
	if err != nil {
		return "", err
	}
	if ok == 0 {
		return "", ErrNotFound
	}
	return secret, nil
}

// WebhookSecret is the user's callback signing secret, or "" when none was made.
func (s *Store) WebhookSecret(ctx context.Context, userID int64) (string, error) {
	v, err := s.rdb.HGet(ctx, s.keys.User(userID), "webhook_secret").Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return v, err
}

// ---------- API keys ----------

// APIKey is a newly made key; the plain key is returned once and only its hash is stored.
type APIKey struct {
	Key       string
	UserID    int64
	ExpiresAt *time.Time
}

func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// CreateAPIKey makes a random key for an existing user. expiresAt may lie in the past.
func (s *Store) CreateAPIKey(ctx context.Context, userID int64, expiresAt *time.Time) (APIKey, error) {
	if _, err := s.GetUser(ctx, userID); err != nil {
		return APIKey{}, err
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return APIKey{}, err
	}
	key := "usk_" + base64.RawURLEncoding.EncodeToString(raw[:])
	exp := int64(0)
	if expiresAt != nil {
		exp = expiresAt.UnixMilli()
	}
	if err := s.rdb.HSet(ctx, s.keys.APIKey(hashKey(key)), "user", userID, "expires", exp).Err(); err != nil {
		return APIKey{}, err
	}
	return APIKey{Key: key, UserID: userID, ExpiresAt: expiresAt}, nil
}

// Authenticate finds the user of an API key.
func (s *Store) Authenticate(ctx context.Context, key string, now time.Time) (User, error) {
	m, err := s.rdb.HGetAll(ctx, s.keys.APIKey(hashKey(key))).Result()
	if err != nil {
		return User{}, err
	}
	if len(m) == 0 {
		return User{}, ErrKeyUnknown
	}
	if exp, _ := strconv.ParseInt(m["expires"], 10, 64); exp != 0 && now.UnixMilli() >= exp {
		return User{}, ErrKeyExpired
	}
	uid, err := strconv.ParseInt(m["user"], 10, 64)
	if err != nil {
		return User{}, fmt.Errorf("store: API key record: %w", err)
	}
	return s.GetUser(ctx, uid)
}

// ---------- images ----------

// EditInfo is the seed's PickTypeClass: text that travels with an image and its upsized copies.
type EditInfo struct {
	OriginalPrompt string
	Super          string
	Main           string
	VariationID    int64
	GroupID        string
	BlurReason     string
}

// Image is an image's metadata; its bytes are in the blob store under BlobKey(ID).
type Image struct {
	ID         int64
	OwnerID    int64
	Width      int
	Height     int
	Scale      string // "1x" for uploads, "2x", "4x", "8x" for results
	Format     string // jpeg, png, webp
	Collection string // set on admin images; every user sees collection images
	Size       int64
	SHA256     string
	CreatedAt  time.Time
	EditInfo
}

// Pixels is Width*Height.
func (im Image) Pixels() int64 { return int64(im.Width) * int64(im.Height) }

// VisibleTo reports whether a user may see the image: their own, or any collection image.
func (im Image) VisibleTo(userID int64) bool { return im.OwnerID == userID || im.Collection != "" }

// Fields is the image as a Redis hash, for HSET (also used by the registry's completion script).
func (im Image) Fields() []any {
	return []any{
		"owner", im.OwnerID, "width", im.Width, "height", im.Height, "scale", im.Scale, "format", im.Format,
		"collection", im.Collection, "size", im.Size, "sha256", im.SHA256, "created", im.CreatedAt.UnixMilli(),
		"prompt", im.OriginalPrompt, "super", im.Super, "main", im.Main, "variation", im.VariationID,
		"group", im.GroupID, "blur", im.BlurReason,
	}
}

func imageFromHash(id int64, m map[string]string) Image {
	i64 := func(k string) int64 { n, _ := strconv.ParseInt(m[k], 10, 64); return n }
	return Image{
		ID: id, OwnerID: i64("owner"), Width: int(i64("width")), Height: int(i64("height")),
		Scale: m["scale"], Format: m["format"], Collection: m["collection"], Size: i64("size"), SHA256: m["sha256"],
		CreatedAt: time.UnixMilli(i64("created")),
		EditInfo: EditInfo{
			OriginalPrompt: m["prompt"], Super: m["super"], Main: m["main"], VariationID: i64("variation"),
			GroupID: m["group"], BlurReason: m["blur"],
		},
	}
}

// NextImageID allocates an image id. Ids only grow; an id allocated for an upsize that is then canceled
// is never used.
func (s *Store) NextImageID(ctx context.Context) (int64, error) {
	return s.rdb.Incr(ctx, s.keys.ImageSeq()).Result()
}

// PutImage stores metadata of an image whose bytes are already in the blob store.
func (s *Store) PutImage(ctx context.Context, im Image) error {
	return s.rdb.HSet(ctx, s.keys.Image(im.ID), im.Fields()...).Err()
}

func (s *Store) GetImage(ctx context.Context, id int64) (Image, error) {
	m, err := s.rdb.HGetAll(ctx, s.keys.Image(id)).Result()
	if err != nil {
		return Image{}, err
	}
	if len(m) == 0 {
		return Image{}, ErrNotFound
	}
	return imageFromHash(id, m), nil
}

// ---------- admin settings ----------

// Settings are the admin's global upsize settings.
type Settings struct {
	Model string           // "" when none is set
	Costs map[string]int64 // by scale ("2x"); a missing scale has no cost
}

var scales = []string{"2x", "4x", "8x"}

func (s *Store) GetSettings(ctx context.Context) (Settings, error) {
	m, err := s.rdb.HGetAll(ctx, s.keys.Settings()).Result()
	if err != nil {
		return Settings{}, err
	}
	st := Settings{Model: m["model"], Costs: map[string]int64{}}
	for _, sc := range scales {
		if v, ok := m["cost:"+sc]; ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			st.Costs[sc] = n
		}
	}
	return st, nil
}

func (s *Store) SetModel(ctx context.Context, model string) error {
	return s.rdb.HSet(ctx, s.keys.Settings(), "model", model).Err()
}

func (s *Store) DeleteModel(ctx context.Context) error {
	return s.rdb.HDel(ctx, s.keys.Settings(), "model").Err()
}

// SetCosts replaces the whole cost table in one transaction: a scale absent from costs has no cost.
func (s *Store) SetCosts(ctx context.Context, costs map[string]int64) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HDel(ctx, s.keys.Settings(), "cost:2x", "cost:4x", "cost:8x")
		for sc, n := range costs {
			p.HSet(ctx, s.keys.Settings(), "cost:"+sc, n)
		}
		return nil
	})
	return err
}

func (s *Store) DeleteCosts(ctx context.Context) error {
	return s.SetCosts(ctx, nil)
}
