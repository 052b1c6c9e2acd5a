package callback

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"upsize/internal/cancel"
	"upsize/internal/store"
	"upsize/internal/testlog"
	"upsize/internal/testredis"
)

// fixture is a Redis database of the test's own with a registry, a store and a user with a webhook
// secret; requests are made through the registry, as the API and the workers make them.
type fixture struct {
	t      *testing.T
	ctx    context.Context
	rdb    *redis.Client
	reg    *cancel.Registry
	st     *store.Store
	user   int64
	secret string
	logs   *testlog.Buffer
	log    *slog.Logger
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	rdb := testredis.Redis(t)
	f := &fixture{
		t: t, ctx: context.Background(), rdb: rdb, st: store.New(rdb, store.DefaultKeys),
		reg:  cancel.NewRegistry(rdb, store.DefaultKeys, cancel.Settings{TTL: time.Hour}),
		logs: &testlog.Buffer{},
	}
	f.log = slog.New(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", f.logs.String())
		}
	})
	f.user = f.newUser(true)
	return f
}

// newUser makes a user with credits and, when withSecret, a webhook secret (kept in f.secret).
func (f *fixture) newUser(withSecret bool) int64 {
	f.t.Helper()
	credits := int64(1000)
	u, err := f.st.CreateUser(f.ctx, store.UserPatch{Credits: &credits})
	if err != nil {
		f.t.Fatal(err)
	}
	if withSecret {
		if f.secret, err = f.st.SetWebhookSecret(f.ctx, u.ID); err != nil {
			f.t.Fatal(err)
		}
	}
	return u.ID
}

// admit admits a request of user with a callback URL.
func (f *fixture) admit(user int64, rid, callbackURL string) cancel.Request {
	f.t.Helper()
	res, err := f.reg.Admit(f.ctx, cancel.Admission{
		UserID: user, RequestID: rid, ImageID: 1, Scale: "2x", Model: "lanczos3", Cost: 1,
		Work: 100 * time.Millisecond, Queue: "q", TaskID: "t-" + rid, CallbackURL: callbackURL,
	})
	if err != nil || !res.Admitted {
		f.t.Fatalf("admit %s: %+v %v", rid, res, err)
	}
	return res.Request
}

// complete admits, starts and completes a request (its result image recorded, with text that JSON
// escapes).
func (f *fixture) complete(rid, callbackURL string) cancel.Request {
	f.t.Helper()
	req := f.admit(f.user, rid, callbackURL)
	req, run, err := f.reg.Start(f.ctx, f.user, rid)
	if err != nil || !run {
		f.t.Fatalf("start %s: %v %v", rid, run, err)
	}
	img := store.Image{
		ID: req.ResultID, OwnerID: f.user, Width: 640, Height: 480, Scale: "2x", Format: "png", Size: 1234,
		CreatedAt: time.Now(), EditInfo: store.EditInfo{OriginalPrompt: `a <cat> & "dog"`, VariationID: 1, GroupID: "g"},
	}
	if st, err := f.reg.Complete(f.ctx, req, img); err != nil || st != cancel.Completed {
		f.t.Fatalf("complete %s: %s %v", rid, st, err)
	}
	return f.get(f.user, rid)
}

func (f *fixture) cancelReq(user int64, rid, callbackURL string) cancel.Request {
	f.t.Helper()
	f.admit(user, rid, callbackURL)
	if res, err := f.reg.Cancel(f.ctx, user, rid); err != nil || res.State != cancel.Canceled {
		f.t.Fatalf("cancel %s: %+v %v", rid, res, err)
	}
	return f.get(user, rid)
}

func (f *fixture) fail(rid, callbackURL string) cancel.Request {
	f.t.Helper()
	f.admit(f.user, rid, callbackURL)
	if st, err := f.reg.Fail(f.ctx, f.user, rid, 422, "invalid_image"); err != nil || st != cancel.Failed {
		f.t.Fatalf("fail %s: %s %v", rid, st, err)
	}
	return f.get(f.user, rid)
}

func (f *fixture) get(user int64, rid string) cancel.Request {
	f.t.Helper()
	req, err := f.reg.Get(f.ctx, user, rid)
	if err != nil {
		f.t.Fatal(err)
	}
	return req
}

func (f *fixture) due() int64 {
	f.t.Helper()
	n, err := f.rdb.ZCard(f.ctx, store.DefaultKeys.Callbacks()).Result()
	if err != nil {
		f.t.Fatal(err)
	}
	return n
}

// fast are the options of the tests: retries and polls in milliseconds.
func fast(extra ...Option) []Option {
	return append([]Option{
		WithRetryDelay(func(int) time.Duration { return 50 * time.Millisecond }),
		WithDispatchInterval(20 * time.Millisecond), WithPollInterval(10 * time.Millisecond),
	}, extra...)
}

// deliverer makes a Deliverer allowing entries, with its asynq server and dispatcher running until the
// test ends (as one worker process runs them).
func (f *fixture) deliverer(entries []string, opts ...Option) *Deliverer {
	f.t.Helper()
	d := f.newDeliverer(entries, opts...)
	f.serve(d)
	f.dispatch(d)
	return d
}

func (f *fixture) newDeliverer(entries []string, opts ...Option) *Deliverer {
	f.t.Helper()
	allow, err := NewAllowlist(entries)
	if err != nil {
		f.t.Fatal(err)
	}
	return New(f.rdb, f.reg, f.st, allow, f.log, prometheus.NewRegistry(), fast(opts...)...)
}

func (f *fixture) serve(d *Deliverer) {
	f.t.Helper()
	srv := d.NewServer(5 * time.Second)
	if err := srv.Start(d.Handler()); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(srv.Shutdown)
}

func (f *fixture) dispatch(d *Deliverer) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { d.RunDispatcher(ctx) })
	f.t.Cleanup(func() { cancel(); wg.Wait() })
}

func (f *fixture) inspector() *asynq.Inspector { return asynq.NewInspectorFromRedisClient(f.rdb) }

func counter(d *Deliverer, result string) float64 {
	return testutil.ToFloat64(d.m.WithLabelValues(result))
}

// receiver is a real HTTP server on 127.0.0.1 that records every delivery; answer decides the reply to
// the n-th one (from 0).
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []delivery
	answer func(n int, w http.ResponseWriter, r *http.Request)
}

type delivery struct {
	at     time.Time
	header http.Header
	body   []byte
	path   string
}

func newReceiver(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{answer: answer}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		n := len(rc.got)
		rc.got = append(rc.got, delivery{at: time.Now(), header: r.Header.Clone(), body: body, path: r.URL.RequestURI()})
		rc.mu.Unlock()
		if rc.answer != nil {
			rc.answer(n, w, r)
		}
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

// hostPort is the receiver's "127.0.0.1:port", the allowlist entry that lists it explicitly.
func (rc *receiver) hostPort() string { u, _ := url.Parse(rc.srv.URL); return u.Host }

func (rc *receiver) url(path string) string { return rc.srv.URL + path }

func (rc *receiver) deliveries() []delivery {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]delivery(nil), rc.got...)
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// redisZ is a sorted set member scored now, as the registry's scripts add due callbacks.
func redisZ(member string) redis.Z {
	return redis.Z{Score: float64(time.Now().UnixMilli()), Member: member}
}
