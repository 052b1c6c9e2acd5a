// Command worker runs upsize tasks from asynq with libvips, and serves /metrics, /healthz and /readyz.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hibiken/asynq"

	"upsize/internal/app"
	"upsize/internal/cancel"
	"upsize/internal/config"
	"upsize/internal/imageops"
	"upsize/internal/janitor"
	"upsize/internal/jobs"
	"upsize/internal/metrics"
	"upsize/internal/obs"
	"upsize/internal/redisconn"
	"upsize/internal/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

// run works until ctx is done, then stops taking tasks and gives in-flight ones SHUTDOWN_TIMEOUT to
// finish; asynq hands back what is still running, and another worker runs it again.
func run(ctx context.Context, _ []string, getenv func(string) string, stdout io.Writer) error {
	base, err := app.Open("worker", getenv, stdout, func(c config.Config) int { return 4*c.WorkerConcurrency + 16 })
	if err != nil {
		return err
	}
	defer base.Close()
	cfg, log, rdb, reg := base.Config, base.Log, base.Redis, base.Registry
	inflight := cancel.NewInflight(rdb, reg)
	listenCtx, stopListening := context.WithCancel(context.WithoutCancel(ctx))
	defer stopListening()
	go func() {
		if err := inflight.Run(listenCtx); err != nil {
			log.Error("cancel subscription ended", "err", err)
		}
	}()

	promReg := obs.NewRegistry()
	proc := &jobs.Processor{
		Registry: reg, Inflight: inflight, Images: base.Store, Blobs: base.Blobs, Upsize: imageops.Upsize,
		Encoding: imageops.DefaultEncoding, MaxInputPixels: cfg.MaxInputPixels, MaxOutputPixels: cfg.MaxOutputPixels,
		Log: log, Metrics: metrics.NewWorker(promReg, rdb, cfg.WorkerConcurrency),
	}
	// Stale partial writes and bytes without a record (crashes between the two) are removed by one
	// janitor at a time across the workers.
	jan, err := janitor.New(rdb, store.DefaultKeys, base.Blobs,
		janitor.Config{Interval: cfg.JanitorInterval, Grace: cfg.JanitorGrace}, log, metrics.NewJanitor(promReg))
	if err != nil {
		return err
	}
	go jan.Run(listenCtx)

	mux := asynq.NewServeMux()
	mux.Handle(jobs.TypeUpsize, proc)
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency: cfg.WorkerConcurrency,
		Queues:      jobs.QueueWeights,
		// asynq polls idle queues; its default of 1 s would add ~0.5-1 s to every request.
		TaskCheckInterval: cfg.WorkerPollInterval,
		ShutdownTimeout:   cfg.ShutdownTimeout,
		RetryDelayFunc:    retryDelay,
		Logger:            obs.AsynqLogger{L: log},
		LogLevel:          asynq.WarnLevel,
	})

	var draining atomic.Bool
	health := http.NewServeMux()
	health.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeStatus(w, nil) })
	health.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		writeStatus(w, ready(r.Context(), &draining, inflight, srv))
	})
	health.Handle("GET /metrics", obs.Handler(promReg, log))
	health.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		// Every answer is JSON, as the API's: the error envelope.
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintln(w, `{"success":false,"code":404,"data":"not_found"}`)
	})
	hs := &http.Server{Handler: health, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return err
	}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server", "err", err)
		}
	}()

	// Take tasks only once cancels are heard, so that no cancel of a running task is missed.
	select {
	case <-inflight.Ready():
	case <-ctx.Done():
		return nil
	}
	if err := srv.Start(mux); err != nil {
		return err
	}
	log.Info("working", "addr", ln.Addr().String(), "concurrency", cfg.WorkerConcurrency,
		"poll_interval", cfg.WorkerPollInterval, "redis", redisconn.Redact(cfg.RedisURL), "blob_dir", cfg.BlobDir)

	<-ctx.Done()
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	draining.Store(true)
	srv.Shutdown() // waits up to ShutdownTimeout, then hands unfinished tasks back to the queue
	sctx, cancelHS := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelHS()
	_ = hs.Shutdown(sctx)
	log.Info("stopped")
	return nil
}

// retryDelay: passing failures (Redis, disk) are retried soon; asynq's default waits minutes.
func retryDelay(n int, _ error, _ *asynq.Task) time.Duration {
	return time.Duration(1<<min(n, 5)) * time.Second
}

func ready(ctx context.Context, draining *atomic.Bool, inflight *cancel.Inflight, srv *asynq.Server) error {
	if draining.Load() {
		return errors.New("draining")
	}
	select {
	case <-inflight.Ready():
	default:
		return errors.New("not yet subscribed to cancels")
	}
	return srv.Ping()
}

func writeStatus(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "{\"status\":\"unavailable\",\"reason\":%q}\n", err.Error())
		return
	}
	fmt.Fprintln(w, `{"status":"ok"}`)
}
