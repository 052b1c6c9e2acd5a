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
	"syscall"
	"time"

	"upsize/internal/app"
	"upsize/internal/redisconn"
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
	base, err := app.Open("worker", getenv, stdout)
	if err != nil {
		return err
	}
	defer base.Close()
	cfg, log := base.Config, base.Log
	w, err := app.NewWorker(base, app.WorkerOptions{})
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: w.Health, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return err
	}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server", "err", err)
		}
	}()
	if err := w.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	log.Info("working", "addr", ln.Addr().String(), "concurrency", cfg.WorkerConcurrency,
		"poll_interval", cfg.WorkerPollInterval, "redis", redisconn.Redact(cfg.RedisURL), "blob_url", cfg.BlobURL)

	<-ctx.Done()
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	w.Stop() // waits up to SHUTDOWN_TIMEOUT, then hands unfinished tasks back to the queue
	sctx, cancelHS := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelHS()
	_ = hs.Shutdown(sctx)
	log.Info("stopped")
	return nil
}
