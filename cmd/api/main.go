// Command api is the HTTP front door: it admits upsizes, enqueues their tasks and waits for outcomes.
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

	"golang.org/x/net/netutil"

	"upsize/internal/app"
	"upsize/internal/cancel"
	"upsize/internal/config"
	"upsize/internal/httpapi"
	"upsize/internal/jobs"
	"upsize/internal/metrics"
	"upsize/internal/obs"
	"upsize/internal/redisconn"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "api:", err)
		os.Exit(1)
	}
}

// run serves until ctx is done, then drains: readiness turns 503 at once, requests keep being served for
// DRAIN_DELAY (so load balancers stop sending), waiting upsizes answer 202 before DRAIN_TIMEOUT runs out,
// and the server stops.
func run(ctx context.Context, _ []string, getenv func(string) string, stdout io.Writer) error {
	// Each waiting upsize holds no connection (one pub/sub connection serves them all), so the pool is
	// for short commands; it is sized for bursts of admissions.
	base, err := app.Open("api", getenv, stdout, func(config.Config) int { return 256 })
	if err != nil {
		return err
	}
	defer base.Close()
	cfg, log, rdb, reg := base.Config, base.Log, base.Redis, base.Registry
	hub := cancel.NewHub(rdb, reg)
	hubCtx, stopHub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHub()
	go func() {
		if err := hub.Run(hubCtx); err != nil {
			log.Error("outcome subscription ended", "err", err)
		}
	}()

	queue := jobs.NewQueue(rdb)
	// An API that dies between reserving credits and enqueuing leaves a request behind; any API finds it.
	go queue.RunSweeper(hubCtx, reg, 10*time.Second, 30*time.Second, log)

	promReg := obs.NewRegistry()
	measure := metrics.NewAPI(promReg, rdb, jobs.Queues, jobs.PendingKey, jobs.ActiveKey)
	var draining atomic.Bool
	stopWaiting := make(chan struct{})
	deps := &httpapi.Deps{
		Log: log, Store: base.Store, Registry: reg, Hub: hub, Queue: queue, Blobs: base.Blobs,
		Limits: httpapi.Limits{
			MaxUploadBytes: cfg.MaxUploadBytes, MaxInputPixels: cfg.MaxInputPixels, MaxOutputPixels: cfg.MaxOutputPixels,
			QueueMaxBacklog: cfg.QueueMaxBacklog, WaitTimeout: cfg.UpsizeWaitTimeout,
			BodyTimeout: cfg.BodyTimeout, UploadMemory: cfg.UploadMemory, ValidateMemory: cfg.ValidateMemory,
			ValidateTimeout: cfg.ValidateTimeout,
		},
		AdminToken: cfg.AdminToken,
		Ready: func(ctx context.Context) error {
			if draining.Load() {
				return errors.New("draining")
			}
			select {
			case <-hub.Ready():
			default:
				return errors.New("not yet subscribed to outcomes")
			}
			return rdb.Ping(ctx).Err()
		},
		StopWaiting:    stopWaiting,
		MetricsHandler: obs.Handler(promReg, log),
		Measure:        measure,
	}
	srv := &http.Server{
		Handler:           httpapi.NewHandler(deps),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return err
	}
	// Each connection costs memory whatever it sends; past the bound, new ones wait in the kernel's
	// accept queue.
	ln = netutil.LimitListener(ln, int(cfg.MaxConnections))
	log.Info("listening", "addr", ln.Addr().String(), "redis", redisconn.Redact(cfg.RedisURL), "blob_dir", cfg.BlobDir,
		"admin_api", cfg.AdminToken != "")
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("draining", "delay", cfg.DrainDelay, "timeout", cfg.DrainTimeout)
	draining.Store(true)
	time.Sleep(cfg.DrainDelay)
	// Waiting upsizes answer 202 halfway: their answers must be written, and Shutdown only notices idle
	// connections every 500 ms, before the deadline.
	giveUp := time.AfterFunc(cfg.DrainTimeout/2, func() { close(stopWaiting) })
	defer giveUp.Stop()
	sctx, cancelShutdown := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancelShutdown()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("shutdown: connections still busy after DRAIN_TIMEOUT: %w", err)
	}
	log.Info("stopped")
	return nil
}
