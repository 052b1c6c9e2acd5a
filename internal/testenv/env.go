package testenv

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"upsize/internal/blob"
	"upsize/internal/cancel"
	"upsize/internal/httpapi"
	"upsize/internal/imageops"
	"upsize/internal/jobs"
	"upsize/internal/metrics"
	"upsize/internal/obs"
	"upsize/internal/store"
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
}

// Env is a whole service in one process on a Redis database of its own.
type Env struct {
	T          testing.TB
	Opts       Options
	RDB        *redis.Client
	Store      *store.Store
	Registry   *cancel.Registry
	Hub        *cancel.Hub
	Queue      *jobs.Queue
	Blobs      *blob.FS
	Server     *httptest.Server
	Client     *http.Client // validates every response against openapi.yaml
	AdminToken string
	Log        *slog.Logger
	Metrics    *prometheus.Registry // the API's

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

// New starts the API (and, unless NoWorker, one worker).
func New(t testing.TB, o Options) *Env {
	t.Helper()
	imageops.Init(0)
	if o.WaitTimeout == 0 {
		o.WaitTimeout = 60 * time.Second
	}
	if o.QueueMaxBacklog == 0 {
		o.QueueMaxBacklog = 10000
	}
	if o.MaxInputPixels == 0 {
		o.MaxInputPixels = 50_000_000
	}
	if o.MaxOutputPixels == 0 {
		o.MaxOutputPixels = 100_000_000
	}
	if o.Concurrency == 0 {
		o.Concurrency = 2
	}
	if o.Upsize == nil {
		o.Upsize = imageops.Upsize
	}
	if o.PollInterval == 0 {
		o.PollInterval = 2 * time.Millisecond
	}
	if o.BodyTimeout == 0 {
		o.BodyTimeout = 60 * time.Second
	}
	if o.UploadMemory == 0 {
		o.UploadMemory = 128 << 20
	}
	if o.ValidateMemory == 0 {
		o.ValidateMemory = 512 << 20
	}
	if o.ValidateTimeout == 0 {
		o.ValidateTimeout = 30 * time.Second
	}
	if o.RequestTTL == 0 {
		o.RequestTTL = time.Hour
	}
	rdb := Redis(t)
	blobs, err := blob.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{
		T: t, Opts: o, RDB: rdb, Store: store.New(rdb, store.DefaultKeys), Blobs: blobs,
		Queue: jobs.NewQueue(rdb), AdminToken: "test-admin-token", Log: Logger(),
	}
	if o.LogTo != nil {
		e.Log = obs.NewLogger(o.LogTo, "debug", "test")
	}
	e.Registry = cancel.NewRegistry(rdb, store.DefaultKeys, cancel.Settings{TTL: o.RequestTTL, MaxOpen: o.MaxQueuedPerUser, MaxTombstones: o.MaxTombstones})
	e.Hub = cancel.NewHub(rdb, e.Registry)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Hub.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
	waitReady(t, e.Hub.Ready())

	e.Metrics = obs.NewRegistry()
	h := httpapi.NewHandler(&httpapi.Deps{
		Log: e.Log, Store: e.Store, Registry: e.Registry, Hub: e.Hub, Queue: e.Queue, Blobs: blobs,
		Limits: httpapi.Limits{
			MaxUploadBytes: 32 << 20, MaxInputPixels: o.MaxInputPixels, MaxOutputPixels: o.MaxOutputPixels,
			QueueMaxBacklog: o.QueueMaxBacklog, WaitTimeout: o.WaitTimeout,
			BodyTimeout: o.BodyTimeout, UploadMemory: o.UploadMemory, ValidateMemory: o.ValidateMemory,
			ValidateTimeout: o.ValidateTimeout, GateWait: o.GateWait,
		},
		AdminToken:     e.AdminToken,
		Ready:          func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		MetricsHandler: obs.Handler(e.Metrics, e.Log),
		Measure:        metrics.NewAPI(e.Metrics, rdb, jobs.Queues, jobs.PendingKey, jobs.ActiveKey),
	})
	e.Server = httptest.NewServer(h)
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

// Worker is one asynq server running the processor, as cmd/worker does.
type Worker struct {
	Metrics   *prometheus.Registry
	Server    *asynq.Server
	Processor *jobs.Processor
	Inflight  *cancel.Inflight
	stop      func()
	once      sync.Once
}

// StartWorker starts a worker; it is stopped when the test ends.
func (e *Env) StartWorker() *Worker {
	e.T.Helper()
	w := &Worker{Inflight: cancel.NewInflight(e.RDB, e.Registry), Metrics: obs.NewRegistry()}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Inflight.Run(ctx) }()
	waitReady(e.T, w.Inflight.Ready())
	w.Processor = &jobs.Processor{
		Registry: e.Registry, Inflight: w.Inflight, Images: e.Store, Blobs: e.Blobs, Upsize: e.Opts.Upsize,
		Encoding: imageops.DefaultEncoding, MaxInputPixels: e.Opts.MaxInputPixels, MaxOutputPixels: e.Opts.MaxOutputPixels,
		Log: e.Log, Observe: e.Opts.Observe, Metrics: metrics.NewWorker(w.Metrics, e.RDB, e.Opts.Concurrency),
	}
	mux := asynq.NewServeMux()
	mux.Handle(jobs.TypeUpsize, w.Processor)
	w.Server = asynq.NewServerFromRedisClient(e.RDB, asynq.Config{
		Concurrency: e.Opts.Concurrency, Queues: jobs.QueueWeights, TaskCheckInterval: e.Opts.PollInterval,
		ShutdownTimeout: 10 * time.Second, Logger: obs.AsynqLogger{L: e.Log}, LogLevel: asynq.ErrorLevel,
		RetryDelayFunc:           func(int, error, *asynq.Task) time.Duration { return 100 * time.Millisecond },
		DelayedTaskCheckInterval: 100 * time.Millisecond,
	})
	if err := w.Server.Start(mux); err != nil {
		e.T.Fatal(err)
	}
	w.stop = func() { w.Server.Shutdown(); stop(); <-done }
	e.mu.Lock()
	e.workers = append(e.workers, w)
	e.mu.Unlock()
	e.T.Cleanup(w.Stop)
	return w
}

// Stop shuts the worker down (in-flight tasks get their shutdown timeout).
func (w *Worker) Stop() { w.once.Do(w.stop) }

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
