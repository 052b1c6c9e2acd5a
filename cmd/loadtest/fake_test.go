package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"upsize/internal/jobs"
)

const fakeAdminToken = "test-admin-token"

// fakeAPI is the service as SPEC describes it, cut down to what the tool uses. Upsizes answer in a
// fixed pattern (201, 202, 409, 429, again and again) and keep asynq's lists in Redis up to date the way
// the real queue would: a 201 holds an active task while it works, a 202 leaves a pending task until
// its request is polled twice and reaches its final state (finals, in turn: completed by default), or
// its event stream has told it (events). With hang set, upsizes wait until their client gives up.
// It notes everything that breaks the contract in problems.
type fakeAPI struct {
	rdb  *redis.Client
	hang bool
	// serve, when set, makes upsizes work as the service's do (fakeserve_test.go) instead of the pattern.
	serve *fakeScheduler
	// finals are the final states of the 202s, in turn (completed, canceled or failed); none: completed.
	finals []string
	// streamFaults are how the event streams of the 202s misbehave, in turn (see events); none: never.
	streamFaults []string
	// streamLimit bounds a user's open event streams, as the service does (maxStreamsPerUser, 8).
	streamLimit int
	// step is the time between two events of a stream.
	step time.Duration

	mu         sync.Mutex
	nextID     int64
	keys       map[string]int64 // API key → user id
	plans      map[int64]string // user id → plan
	owners     map[int64]int64  // image id → owner
	uploads    map[int64][]string
	images     map[int64]fakeImage
	configured map[string]string // admin path → body
	upsizes    int
	byUser     map[int64]int
	rids       map[string]bool        // "<user>/<request id>" of every upsize
	follows    map[string]*fakeFollow // "<user>/<request id>" of a 202 → its state
	accepted   int                    // 202s answered
	open       map[int64]int          // user → open event streams
	streams    int                    // event streams asked for
	cancels    []string
	problems   []string
}

func newFakeAPI(rdb *redis.Client, hang bool) (*fakeAPI, http.Handler) {
	f := &fakeAPI{rdb: rdb, hang: hang, keys: map[string]int64{}, plans: map[int64]string{}, owners: map[int64]int64{},
		uploads: map[int64][]string{}, images: map[int64]fakeImage{}, configured: map[string]string{}, byUser: map[int64]int{}, rids: map[string]bool{},
		follows: map[string]*fakeFollow{}, open: map[int64]int{}, streamLimit: 8, step: 20 * time.Millisecond}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /admin/users", f.admin(f.createUser))
	mux.HandleFunc("POST /admin/users/{id}/api-keys", f.admin(f.createKey))
	mux.HandleFunc("PUT /admin/models/upsize", f.admin(f.configure))
	mux.HandleFunc("PUT /admin/credit-costs/upsize", f.admin(f.configure))
	mux.HandleFunc("POST /api/images", f.public(f.upload))
	mux.HandleFunc("POST /api/images/{id}/upsize", f.public(f.upsize))
	mux.HandleFunc("GET /api/requests/{rid}", f.public(f.request))
	mux.HandleFunc("GET /api/requests/{rid}/events", f.public(f.events))
	mux.HandleFunc("POST /api/images/cancel", f.public(f.cancel))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		f.problem("unexpected %s %s", r.Method, r.URL.Path)
		fail(w, http.StatusNotFound, "not_found")
	})
	return f, mux
}

func (f *fakeAPI) problem(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.problems = append(f.problems, fmt.Sprintf(format, args...))
}

// checkContract fails the test if the fake saw the tool break the contract.
func (f *fakeAPI) checkContract(t *testing.T) {
	t.Helper()
	f.mu.Lock()
	problems := f.problems
	f.mu.Unlock()
	if len(problems) > 0 {
		t.Fatalf("the fake saw contract violations:\n%s", strings.Join(problems, "\n"))
	}
}

// runTool runs the load tool with args and fails the test if it fails; it returns what it printed.
func runTool(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	var out, errs bytes.Buffer
	if err := run(context.Background(), args, &out, &errs); err != nil {
		t.Fatalf("run: %v\n%s", err, errs.String())
	}
	return out.String(), errs.String()
}

func fail(w http.ResponseWriter, code int, reason string) {
	answer(w, code, map[string]any{"success": false, "code": code, "data": reason})
}

func answer(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

func (f *fakeAPI) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+fakeAdminToken {
			f.problem("%s %s without the admin token", r.Method, r.URL.Path)
			fail(w, http.StatusUnauthorized, "invalid_admin_token")
			return
		}
		h(w, r)
	}
}

type userKey struct{}

func (f *fakeAPI) public(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		user, ok := f.keys[r.Header.Get("X-Api-Key")]
		f.mu.Unlock()
		if !ok {
			f.problem("%s %s with API key %q", r.Method, r.URL.Path, r.Header.Get("X-Api-Key"))
			fail(w, http.StatusUnauthorized, "wrong_api_key")
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), userKey{}, user)))
	}
}

func (f *fakeAPI) createUser(w http.ResponseWriter, r *http.Request) {
	var u struct {
		Plan    string `json:"plan"`
		Credits int64  `json:"credits"`
	}
	if err := json.NewDecoder(r.Body).Decode(&u); err != nil || (u.Plan != "paid" && u.Plan != "free") || u.Credits < 1 {
		f.problem("create user: %+v %v", u, err)
	}
	f.mu.Lock()
	f.nextID++
	id := f.nextID
	f.plans[id] = u.Plan
	f.mu.Unlock()
	answer(w, http.StatusCreated, map[string]any{"user": map[string]any{"id": id, "plan": u.Plan, "credits": u.Credits}})
}

func (f *fakeAPI) createKey(w http.ResponseWriter, r *http.Request) {
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.plans[id] == "" {
		f.problems = append(f.problems, "API key of unknown user "+r.PathValue("id"))
	}
	key := "key-" + r.PathValue("id")
	f.keys[key] = id
	answer(w, http.StatusCreated, map[string]any{"apiKey": key, "userId": id, "expiresAt": nil})
}

func (f *fakeAPI) configure(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.configured[r.URL.Path] = string(b)
	f.mu.Unlock()
	answer(w, http.StatusOK, json.RawMessage(b))
}

func (f *fakeAPI) upload(w http.ResponseWriter, r *http.Request) {
	user := r.Context().Value(userKey{}).(int64)
	file, _, err := r.FormFile("file")
	if err != nil {
		f.problem("upload without file: %v", err)
		fail(w, http.StatusBadRequest, "missing_file")
		return
	}
	cfg, format, err := image.DecodeConfig(file)
	if err != nil {
		f.problem("upload does not decode: %v", err)
		fail(w, http.StatusUnsupportedMediaType, "unsupported_image_format")
		return
	}
	f.mu.Lock()
	f.nextID++
	id := f.nextID
	f.owners[id] = user
	f.uploads[user] = append(f.uploads[user], fmt.Sprintf("%dx%d.%s", cfg.Width, cfg.Height, format))
	f.images[id] = fakeImage{cfg.Width, cfg.Height, format}
	f.mu.Unlock()
	answer(w, http.StatusCreated, map[string]any{"image": dto(id, cfg.Width, cfg.Height, "1x", user)})
}

func dto(id int64, w, h int, scale string, owner int64) map[string]any {
	return map[string]any{"imageId": id, "resolution": fmt.Sprintf("%dx%d", w, h), "scaleSize": scale, "ownerId": owner}
}

func (f *fakeAPI) upsize(w http.ResponseWriter, r *http.Request) {
	user := r.Context().Value(userKey{}).(int64)
	rid := r.Header.Get("X-Request-Id")
	w.Header().Set("X-Request-Id", rid)
	img, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	var body struct {
		ScaleSize string `json:"scaleSize"`
	}
	err := json.NewDecoder(r.Body).Decode(&body)
	f.mu.Lock()
	n := f.upsizes
	f.upsizes++
	f.byUser[user]++
	if rid == "" || f.rids[fmt.Sprint(user, "/", rid)] {
		f.problems = append(f.problems, fmt.Sprintf("upsize request id %q missing or reused", rid))
	}
	f.rids[fmt.Sprint(user, "/", rid)] = true
	if f.owners[img] != user || err != nil || parseScale(body.ScaleSize) != nil || r.Header.Get("Content-Type") != "application/json" {
		f.problems = append(f.problems, fmt.Sprintf("upsize of image %d by user %d, body %+v (%v)", img, user, body, err))
	}
	queue, _ := jobs.QueuesFor(f.plans[user], 0)
	im, plan := f.images[img], f.plans[user]
	f.mu.Unlock()

	if f.serve != nil {
		f.serve.upsize(w, r, user, plan, rid, im, body.ScaleSize)
		return
	}
	if f.hang {
		<-r.Context().Done()
		return
	}
	ctx := context.WithoutCancel(r.Context())
	switch n % 4 {
	case 0:
		f.rdb.RPush(ctx, jobs.ActiveKey(queue), rid)
		time.Sleep(30 * time.Millisecond)
		f.rdb.LRem(ctx, jobs.ActiveKey(queue), 1, rid)
		answer(w, http.StatusCreated, map[string]any{"image": dto(1000+int64(n), 64, 64, body.ScaleSize, user)})
	case 1:
		f.rdb.RPush(ctx, jobs.PendingKey(queue), rid)
		f.mu.Lock()
		fl := &fakeFollow{final: "completed"}
		if len(f.finals) > 0 {
			fl.final = f.finals[f.accepted%len(f.finals)]
		}
		if len(f.streamFaults) > 0 {
			fl.fault = f.streamFaults[f.accepted%len(f.streamFaults)]
		}
		f.accepted++
		f.follows[fmt.Sprint(user, "/", rid)] = fl
		f.mu.Unlock()
		answer(w, http.StatusAccepted, map[string]any{"success": true, "code": 202, "data": map[string]string{"requestId": rid}})
	case 2:
		fail(w, http.StatusConflict, "user_canceled_request")
	case 3:
		w.Header().Set("Retry-After", "1")
		fail(w, http.StatusTooManyRequests, "queue_full")
	}
}

// fakeFollow is a 202's request as GET /api/requests/{rid} and its event stream see it.
type fakeFollow struct {
	final   string // its final state
	fault   string // how its event streams misbehave (events)
	polls   int
	streams int // event streams opened
}

// body is the request's state, as GET /api/requests/{rid} answers it (and the last event carries it).
func (fl *fakeFollow) body(rid, state string, user int64) map[string]any {
	b := map[string]any{"requestId": rid, "state": state}
	switch state {
	case "completed":
		b["image"] = dto(5000, 64, 64, "2x", user)
	case "failed":
		b["error"] = map[string]any{"code": 422, "data": "invalid_image"}
	}
	return b
}

// follow finds a 202's request, or answers 404 as the service does for an id it does not know.
func (f *fakeAPI) follow(w http.ResponseWriter, r *http.Request, what string) (int64, string, *fakeFollow) {
	user := r.Context().Value(userKey{}).(int64)
	rid := r.PathValue("rid")
	key := fmt.Sprint(user, "/", rid)
	f.mu.Lock()
	fl := f.follows[key]
	f.mu.Unlock()
	if fl == nil {
		f.problem("%s of %s, which was not answered 202", what, key)
		fail(w, http.StatusNotFound, "no_request ("+rid+")")
	}
	return user, rid, fl
}

// done takes a request off asynq's pending list once its final state is told.
func (f *fakeAPI) done(ctx context.Context, user int64, rid string) {
	f.mu.Lock()
	queue, _ := jobs.QueuesFor(f.plans[user], 0)
	f.mu.Unlock()
	f.rdb.LRem(context.WithoutCancel(ctx), jobs.PendingKey(queue), 1, rid)
}

// request is GET /api/requests/{rid}: queued for the first poll, final from the second on.
func (f *fakeAPI) request(w http.ResponseWriter, r *http.Request) {
	user, rid, fl := f.follow(w, r, "poll")
	if fl == nil {
		return
	}
	f.mu.Lock()
	polls := fl.polls
	fl.polls++
	f.mu.Unlock()
	if polls == 0 {
		answer(w, http.StatusOK, fl.body(rid, "queued", user))
		return
	}
	f.done(r.Context(), user, rid)
	answer(w, http.StatusOK, fl.body(rid, fl.final, user))
}

// events is GET /api/requests/{rid}/events as internal/httpapi/events.go serves it: 404 for an unknown
// request, 429 with Retry-After past the user's streamLimit open streams; else a text/event-stream of
// "state" events, one per change (queued with its position 2, then 1; running; the final state with the
// body of GET /api/requests/{rid}), a step apart, with heartbeat comments between them; then it ends.
// The request's fault makes it misbehave: "cut" ends its first stream after the first event, "cut-always"
// every stream; "429" answers every stream 429; "503-once" answers the first one 503.
func (f *fakeAPI) events(w http.ResponseWriter, r *http.Request) {
	user, rid, fl := f.follow(w, r, "event stream")
	if fl == nil {
		return
	}
	f.mu.Lock()
	f.streams++
	attempt := fl.streams
	fl.streams++
	full := f.open[user] >= f.streamLimit || fl.fault == "429"
	if !full {
		f.open[user]++
	}
	f.mu.Unlock()
	if r.Header.Get("Accept") != "text/event-stream" {
		f.problem("event stream of %s asked without Accept: text/event-stream", rid)
	}
	if full {
		w.Header().Set("Retry-After", "5")
		fail(w, http.StatusTooManyRequests, "too_many_requests")
		return
	}
	defer func() {
		f.mu.Lock()
		f.open[user]--
		f.mu.Unlock()
	}()
	if fl.fault == "503-once" && attempt == 0 {
		fail(w, http.StatusServiceUnavailable, "service_unavailable")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	flusher := w.(http.Flusher)
	write := func(s string) bool {
		if _, err := io.WriteString(w, s); err != nil {
			return false
		}
		flusher.Flush()
		return true
	}
	state := func(body map[string]any) bool {
		b, _ := json.Marshal(body)
		return write("event: state\ndata: " + string(b) + "\n\n")
	}
	wait := func() bool {
		select {
		case <-r.Context().Done():
			return false
		case <-time.After(f.step):
			return true
		}
	}
	queued := func(pos int) map[string]any {
		b := fl.body(rid, "queued", user)
		b["position"] = pos
		return b
	}
	if !write(": heartbeat\n\n") || !wait() || !state(queued(2)) {
		return
	}
	if fl.fault == "cut-always" || (fl.fault == "cut" && attempt == 0) {
		return
	}
	if !wait() || !write(": heartbeat\n\n") || !state(queued(1)) || !wait() || !state(fl.body(rid, "running", user)) || !wait() {
		return
	}
	f.done(r.Context(), user, rid)
	state(fl.body(rid, fl.final, user))
}

func (f *fakeAPI) cancel(w http.ResponseWriter, r *http.Request) {
	user := r.Context().Value(userKey{}).(int64)
	f.mu.Lock()
	f.cancels = append(f.cancels, fmt.Sprint(user, "/", r.Header.Get("X-Request-Id")))
	f.mu.Unlock()
	w.Header().Set("X-Request-Id", r.Header.Get("X-Request-Id"))
	if f.serve != nil {
		f.serve.cancel(w, r, user, r.Header.Get("X-Request-Id"))
		return
	}
	answer(w, http.StatusOK, map[string]any{"success": true, "code": 200, "data": "canceled"})
}
