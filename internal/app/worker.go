package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"

	"upsize/internal/blob"
	"upsize/internal/callback"
	"upsize/internal/cancel"
	"upsize/internal/imageops"
	"upsize/internal/janitor"
	"upsize/internal/jobs"
	"upsize/internal/metrics"
	"upsize/internal/obs"
	"upsize/internal/store"
)

// Worker runs upsize tasks from asynq, and serves /healthz, /readyz and /metrics on Health.
type Worker struct {
	Base *Base
	// Servers: with WORKER_CONCURRENCY n ≥ 2, one asynq server of n-1 slots takes every queue and another
	// of one slot takes only small tasks' queues, so heavy work never holds every slot (jobs.Queues).
	// The last one serves completion callbacks only (callback.Queue), with slots of its own: a receiver
	// that fails or hangs never holds an upsize slot.
	Servers   []*asynq.Server
	Processor *jobs.Processor
	Callbacks *callback.Deliverer
	Inflight  *cancel.Inflight
	Janitor   *janitor.Janitor
	Health    http.Handler

	mux      *asynq.ServeMux
	bg       *background
	draining atomic.Bool
}

// WorkerOptions are what a test may swap; zero values are production's.
type WorkerOptions struct {
	Upsize  jobs.UpsizeFunc       // default imageops.Upsize
	Observe func(jobs.TaskReport) // sees every run of every task
}

// NewWorker wires a worker from b's configuration.
func NewWorker(b *Base, o WorkerOptions) (*Worker, error) {
	cfg := b.Config
	if o.Upsize == nil {
		o.Upsize = imageops.Upsize
	}
	w := &Worker{Base: b, Inflight: cancel.NewInflight(b.Redis, b.Registry)}
	w.Processor = &jobs.Processor{
		Registry: b.Registry, Inflight: w.Inflight, Images: b.Store, Blobs: b.Blobs, Upsize: o.Upsize,
		Encoding: imageops.DefaultEncoding, MaxInputPixels: cfg.MaxInputPixels, MaxOutputPixels: cfg.MaxOutputPixels,
		Log: b.Log, Metrics: metrics.NewWorker(b.Metrics, b.Redis, cfg.WorkerConcurrency), Observe: o.Observe,
	}
	// Stale partial writes and bytes without a record (crashes between the two) are removed by one
	// janitor at a time across the workers.
	walker, ok := b.Blobs.(blob.Walker)
	if !ok {
		return nil, fmt.Errorf("the blob store %T cannot be walked: the janitor needs it", b.Blobs)
	}
	jan, err := janitor.New(b.Redis, store.DefaultKeys, walker,
		janitor.Config{Interval: cfg.JanitorInterval, Grace: cfg.JanitorGrace}, b.Log, metrics.NewJanitor(b.Metrics))
	if err != nil {
		return nil, err
	}
	w.Janitor = jan
	allow, err := callback.NewAllowlist(cfg.CallbackAllowedHosts)
	if err != nil {
		return nil, err
	}
	w.Callbacks = callback.New(b.Redis, b.Registry, b.Store, allow, b.Log, b.Metrics)
	w.mux = asynq.NewServeMux()
	w.mux.Handle(jobs.TypeUpsize, w.Processor)
	w.mux.Handle(callback.TypeCallback, w.Callbacks.Handler())
	if n := cfg.WorkerConcurrency; n >= 2 {
		w.Servers = []*asynq.Server{newServer(b, n-1, jobs.QueueWeights), newServer(b, 1, jobs.SmallQueueWeights)}
	} else {
		w.Servers = []*asynq.Server{newServer(b, n, jobs.QueueWeights)} // one slot: nothing to reserve
	}
	w.Servers = append(w.Servers, w.Callbacks.NewServer(cfg.ShutdownTimeout))
	w.Health = w.healthHandler()
	return w, nil
}

// newServer is an asynq server of slots slots over the queues.
func newServer(b *Base, slots int, queues map[string]int) *asynq.Server {
	cfg := b.Config
	retry := cfg.TaskRetryDelay
	return asynq.NewServerFromRedisClient(b.Redis, asynq.Config{
		Concurrency: slots,
		Queues:      queues,
		// asynq polls idle queues; its default of 1 s would add ~0.5-1 s to every request.
		TaskCheckInterval: cfg.WorkerPollInterval,
		ShutdownTimeout:   cfg.ShutdownTimeout,
		// Passing failures (Redis, disk) are retried soon (asynq's default waits minutes), and retries
		// are looked for at least as often as they fall due.
		RetryDelayFunc:           func(n int, _ error, _ *asynq.Task) time.Duration { return retry << min(n, 5) },
		DelayedTaskCheckInterval: min(max(retry/2, 10*time.Millisecond), 5*time.Second),
		Logger:                   obs.AsynqLogger{L: b.Log},
		LogLevel:                 asynq.WarnLevel,
	})
}

// Start listens for cancels, then takes tasks (only once cancels are heard, so that no cancel of a
// running task is missed), and starts the janitor and the callback dispatcher.
func (w *Worker) Start(ctx context.Context) error {
	w.bg = newBackground(ctx)
	log := w.Base.Log
	w.bg.run(func(ctx context.Context) {
		if err := w.Inflight.Run(ctx); err != nil {
			log.Error("cancel subscription ended", "err", err)
		}
	})
	if err := waitReady(ctx, w.Inflight.Ready(), 30*time.Second, "cancel subscription"); err != nil {
		w.bg.stop()
		return err
	}
	for i, srv := range w.Servers {
		if err := srv.Start(w.mux); err != nil {
			for _, started := range w.Servers[:i] {
				started.Shutdown()
			}
			w.bg.stop()
			return err
		}
	}
	w.bg.run(w.Janitor.Run)
	w.bg.run(w.Callbacks.RunDispatcher)
	return nil
}

// Stop stops taking tasks and waits up to SHUTDOWN_TIMEOUT for running ones; asynq hands the rest back
// to the queue.
func (w *Worker) Stop() {
	w.draining.Store(true)
	var wg sync.WaitGroup
	for _, srv := range w.Servers {
		wg.Go(srv.Shutdown) // at once: each waits up to SHUTDOWN_TIMEOUT for its running tasks
	}
	wg.Wait()
	if w.bg != nil {
		w.bg.stop()
	}
}

func (w *Worker) ready() error {
	if w.draining.Load() {
		return errors.New("draining")
	}
	select {
	case <-w.Inflight.Ready():
	default:
		return errors.New("not yet subscribed to cancels")
	}
	for _, srv := range w.Servers {
		if err := srv.Ping(); err != nil {
			return err
		}
	}
	return nil
}

func (w *Worker) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) { writeStatus(rw, nil) })
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, _ *http.Request) { writeStatus(rw, w.ready()) })
	mux.Handle("GET /metrics", obs.Handler(w.Base.Metrics, w.Base.Log))
	mux.HandleFunc("/", func(rw http.ResponseWriter, _ *http.Request) {
		// Every answer is JSON, as the API's: the error envelope.
		rw.Header().Set("Content-Type", "application/json")
		rw.Header().Set("X-Content-Type-Options", "nosniff")
		rw.WriteHeader(http.StatusNotFound)
		fmt.Fprintln(rw, `{"success":false,"code":404,"data":"not_found"}`)
	})
	return mux
}

func writeStatus(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "{\"status\":\"unavailable\",\"reason\":%q}\n", err.Error())
		return
	}
	fmt.Fprintln(w, `{"status":"ok"}`)
}
