// Command api is the HTTP front door: it admits upsizes, enqueues their tasks and waits for outcomes.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/net/netutil"

	"upsize/internal/app"
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
	base, err := app.Open("api", getenv, stdout)
	if err != nil {
		return err
	}
	defer base.Close()
	cfg, log := base.Config, base.Log
	api, err := app.NewAPI(base)
	if err != nil {
		return err
	}
	api.Start(ctx)
	defer api.Stop()

	srv := &http.Server{
		Handler:           api.Handler,
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
	log.Info("listening", "addr", ln.Addr().String(), "redis", redisconn.Redact(cfg.RedisURL), "blob_url", cfg.BlobURL,
		"admin_api", cfg.AdminToken != "")
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("draining", "delay", cfg.DrainDelay, "timeout", cfg.DrainTimeout)
	api.Drain()
	time.Sleep(cfg.DrainDelay)
	// Waiting upsizes answer 202 halfway: their answers must be written, and Shutdown only notices idle
	// connections every 500 ms, before the deadline.
	giveUp := time.AfterFunc(cfg.DrainTimeout/2, api.StopWaiting)
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
