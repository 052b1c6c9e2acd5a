package testenv

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"upsize/internal/app"
	"upsize/internal/blob"
	"upsize/internal/cancel"
	"upsize/internal/config"
	"upsize/internal/jobs"
	"upsize/internal/obs"
	"upsize/internal/store"
	"upsize/internal/testredis"
	"upsize/internal/tests3"
)

// Options shape an environment; zero values take the SPEC's defaults.
type Options struct {
	WaitTimeout      time.Duration
	QueueMaxBacklog  int64
	MaxInputPixels   int64
	MaxOutputPixels  int64
	NoWorker         bool // start no worker (tasks stay queued until StartWorker)
	Concurrency      int
	Upsize           jobs.UpsizeFunc // the worker's image operation (default imageops.Upsize)
	RequestTTL       time.Duration
	MaxQueuedPerUser int64                 // 0: no limit
	MaxTombstones    int64                 // 0: the registry's default
	Observe          func(jobs.TaskReport) // sees every run of every task
	PollInterval     time.Duration         // asynq TaskCheckInterval (default 2ms)
	LogTo            io.Writer             // where the service's JSON logs go (default: see Logger)
	BodyTimeout      time.Duration         // default 60s
	UploadMemory     int64                 // default 128 MiB
	ValidateMemory   int64                 // default 512 MiB
	ValidateTimeout  time.Duration         // default 30s
	GateWait         time.Duration         // default 5s
	FileRedirect     time.Duration         // BLOB_REDIRECT_TTL (default off)
	BlobURL          string                // default BlobURL(t)
	EventHeartbeat   time.Duration         // default 15s
	CallbackHosts    []string              // CALLBACK_ALLOWED_HOSTS (default none)
}

// Env is a whole service in one process on a Redis database of its own, wired by package app as the
// binaries are.
type Env struct {
	T          testing.TB
	Opts       Options
	RDB        *redis.Client
	Store      *store.Store
	Registry   *cancel.Registry
	Hub        *cancel.Hub
	Queue      *jobs.Queue
	Blobs      blob.Store
	Server     *httptest.Server
	Client     *http.Client // validates every response against openapi.yaml
	AdminToken string
	Log        *slog.Logger
	Metrics    *prometheus.Registry // the API's
	Config     config.Config

	mu      sync.Mutex
	workers []*Worker
}

// Logger writes JSON logs to stderr when UPSIZE_TEST_LOG is set, and nowhere otherwise.
func Logger() *slog.Logger {
	var w io.Writer = io.Discard
	if os.Getenv("UPSIZE_TEST_LOG") != "" {
		w = os.Stderr
	}
	return obs.NewLogger(w, "debug", "test")
}

// config is the service's configuration for these options: SPEC's defaults, with what a test shortens.
func (o Options) config(t testing.TB, rdb *redis.Client, blobURL string) config.Config {
	t.Helper()
	env := map[string]string{
		"REDIS_URL": RedisURL(rdb), "BLOB_URL": blobURL, "ADMIN_TOKEN": "test-admin-token",
		"WORKER_CONCURRENCY": "2", "WORKER_POLL_INTERVAL": "2ms", "SHUTDOWN_TIMEOUT": "10s",
		"TASK_RETRY_DELAY": "50ms", "UPSIZE_WAIT_TIMEOUT": "60s",
	}
	set := func(name string, v any, zero bool) {
		if !zero {
			env[name] = fmt.Sprint(v)
		}
	}
	set("UPSIZE_WAIT_TIMEOUT", o.WaitTimeout, o.WaitTimeout == 0)
	set("QUEUE_MAX_BACKLOG", o.QueueMaxBacklog, o.QueueMaxBacklog == 0)
	set("MAX_INPUT_PIXELS", o.MaxInputPixels, o.MaxInputPixels == 0)
	set("MAX_OUTPUT_PIXELS", o.MaxOutputPixels, o.MaxOutputPixels == 0)
	set("WORKER_CONCURRENCY", o.Concurrency, o.Concurrency == 0)
	set("WORKER_POLL_INTERVAL", o.PollInterval, o.PollInterval == 0)
	set("MAX_QUEUED_PER_USER", o.MaxQueuedPerUser, false) // 0 (no limit) unless a test sets one
	set("MAX_TOMBSTONES_PER_USER", o.MaxTombstones, o.MaxTombstones == 0)
	set("BODY_TIMEOUT", o.BodyTimeout, o.BodyTimeout == 0)
	set("UPLOAD_MEMORY", o.UploadMemory, o.UploadMemory == 0)
	set("VALIDATE_MEMORY", o.ValidateMemory, o.ValidateMemory == 0)
	set("VALIDATE_TIMEOUT", o.ValidateTimeout, o.ValidateTimeout == 0)
	set("UPLOAD_WAIT", o.GateWait, o.GateWait == 0)
	set("BLOB_REDIRECT_TTL", o.FileRedirect, o.FileRedirect == 0)
	set("EVENT_HEARTBEAT", o.EventHeartbeat, o.EventHeartbeat == 0)
	set("CALLBACK_ALLOWED_HOSTS", strings.Join(o.CallbackHosts, ","), len(o.CallbackHosts) == 0)
	if o.UploadMemory != 0 && o.UploadMemory < 32<<20 {
		env["MAX_UPLOAD_BYTES"] = fmt.Sprint(o.UploadMemory)
	}
	cfg, err := config.Load("api", func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("test configuration: %v", err)
	}
	// Below config's minimum of 1 minute: tests of expiry need seconds.
	cfg.RequestTTL = time.Hour
	if o.RequestTTL != 0 {
		cfg.RequestTTL = o.RequestTTL
	}
	return cfg
}

// New starts the API (and, unless NoWorker, one worker).
func New(t testing.TB, o Options) *Env {
	t.Helper()
	rdb := Redis(t)
	if o.BlobURL == "" {
		o.BlobURL = BlobURL(t)
	}
	cfg := o.config(t, rdb, o.BlobURL)
	log := Logger()
	if o.LogTo != nil {
		log = obs.NewLogger(o.LogTo, "debug", "test")
	}
	blobs := openBlobs(t, "api", cfg.BlobURL)
	base := app.New(cfg, log, rdb, blobs)
	api, err := app.NewAPI(base)
	if err != nil {
		t.Fatal(err)
	}
	api.Start(context.Background())
	t.Cleanup(api.Stop)
	waitReady(t, api.Hub.Ready())
	e := &Env{
		T: t, Opts: o, RDB: rdb, Store: base.Store, Registry: base.Registry, Hub: api.Hub, Queue: api.Queue,
		Blobs: blobs, AdminToken: cfg.AdminToken, Log: log, Metrics: base.Metrics, Config: cfg,
	}
	e.Server = httptest.NewServer(api.Handler)
	t.Cleanup(e.Server.Close)
	e.Client = &http.Client{Transport: newValidatingTransport(t, e.Server.URL, http.DefaultTransport), Timeout: 2 * time.Minute}
	if !o.NoWorker {
		e.StartWorker()
	}
	return e
}

func waitReady(t testing.TB, ready <-chan struct{}) {
	t.Helper()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("subscription not ready after 10s")
	}
}

// Worker is one worker process's parts, as cmd/worker runs them.
type Worker struct {
	*app.Worker
	Metrics *prometheus.Registry
	once    sync.Once
}

// StartWorker starts a worker on the environment's Redis and blobs; it is stopped when the test ends.
func (e *Env) StartWorker() *Worker {
	e.T.Helper()
	base := app.New(e.Config, e.Log, e.RDB, openBlobs(e.T, "worker", e.Config.BlobURL)) // a process of its own
	aw, err := app.NewWorker(base, app.WorkerOptions{Upsize: e.Opts.Upsize, Observe: e.Opts.Observe})
	if err != nil {
		e.T.Fatal(err)
	}
	if err := aw.Start(context.Background()); err != nil {
		e.T.Fatal(err)
	}
	w := &Worker{Worker: aw, Metrics: base.Metrics}
	e.mu.Lock()
	e.workers = append(e.workers, w)
	e.mu.Unlock()
	e.T.Cleanup(w.Stop)
	return w
}

// Stop shuts the worker down (in-flight tasks get their shutdown timeout).
func (w *Worker) Stop() { w.once.Do(w.Worker.Stop) }

// Exposed gathers the metric families the API and every worker expose now, by name.
func (e *Env) Exposed() map[string]*dto.MetricFamily {
	e.T.Helper()
	out := map[string]*dto.MetricFamily{}
	regs := []*prometheus.Registry{e.Metrics}
	e.mu.Lock()
	for _, w := range e.workers {
		regs = append(regs, w.Metrics)
	}
	e.mu.Unlock()
	for _, r := range regs {
		mfs, err := r.Gather()
		if err != nil {
			e.T.Fatal(err)
		}
		for _, mf := range mfs {
			out[mf.GetName()] = mf
		}
	}
	return out
}

// Redis and RedisURL are testredis', for tests that use the whole environment anyway.
var (
	Redis    = testredis.Redis
	RedisURL = testredis.RedisURL
)

// BlobURL is where a test's image bytes go: a bucket of its own on the test S3 server when TEST_BLOB=s3
// (make test runs the packages that touch blobs both ways), a directory of its own otherwise.
func BlobURL(t testing.TB) string {
	t.Helper()
	if os.Getenv("TEST_BLOB") == "s3" {
		return tests3.Bucket(t)
	}
	return "file://" + t.TempDir()
}

// openBlobs opens the store as a process of role does.
func openBlobs(t testing.TB, role, url string) blob.Store {
	t.Helper()
	s, err := app.OpenBlobs(role, url)
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := s.(interface{ Close() error }); ok {
		t.Cleanup(func() { c.Close() })
	}
	return s
}

// BlobObjects lists the store at url: the keys of its objects, and how many unfinished writes it holds.
func BlobObjects(t testing.TB, url string) (keys map[string]bool, temps int) {
	t.Helper()
	w, ok := openBlobs(t, "worker", url).(blob.Walker)
	if !ok {
		t.Fatalf("the blob store at %s cannot be listed", url)
	}
	ctx := context.Background()
	keys = map[string]bool{}
	if err := w.Walk(ctx, func(e blob.Entry) error { keys[e.Key] = true; return nil }); err != nil {
		t.Fatalf("listing %s: %v", url, err)
	}
	if err := w.WalkTemps(ctx, func(blob.Entry) error { temps++; return nil }); err != nil {
		t.Fatalf("listing unfinished writes of %s: %v", url, err)
	}
	return keys, temps
}
