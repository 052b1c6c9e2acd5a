// Package app wires the service's parts from a configuration: Base (what both processes share), API (the
// HTTP front door and its background loops) and Worker (the asynq server running upsize tasks). Both
// mains and the test environment build the processes here, so that what is tested is what runs.
package app

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"upsize/internal/blob"
	"upsize/internal/cancel"
	"upsize/internal/config"
	"upsize/internal/imageops"
	"upsize/internal/obs"
	"upsize/internal/redisconn"
	"upsize/internal/store"
)

// Base is a process's shared parts.
type Base struct {
	Config   config.Config
	Log      *slog.Logger
	Redis    redis.UniversalClient
	Blobs    blob.Store
	Store    *store.Store
	Registry *cancel.Registry
	Metrics  *prometheus.Registry // this process's
}

// Open reads the configuration of role ("api" or "worker") from getenv, logs JSON to stdout, and opens
// Redis and the blob store.
func Open(role string, getenv func(string) string, stdout io.Writer) (*Base, error) {
	cfg, err := config.Load(role, getenv)
	if err != nil {
		return nil, err
	}
	log := obs.NewLogger(stdout, cfg.LogLevel, role)
	pool := cfg.RedisPoolSize
	if pool == 0 {
		pool = defaultPool(role, cfg)
	}
	rdb, err := redisconn.Open(cfg.RedisURL, pool)
	if err != nil {
		return nil, err
	}
	// Opening sends nothing: a store that is away at start-up is not fatal, only the requests that need
	// it fail (503) until it is back. Say so at once, though.
	blobs, err := OpenBlobs(role, cfg.BlobURL)
	if err != nil {
		rdb.Close()
		return nil, err
	}
	if c, ok := blobs.(interface{ Check(context.Context) error }); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := c.Check(ctx); err != nil {
			log.Warn("the blob store does not answer yet", "blob_url", cfg.BlobURL, "err", err) // no credentials in it
		}
		cancel()
	}
	return New(cfg, log, rdb, blobs), nil
}

// OpenBlobs opens the blob store at url with the options of role ("api" or "worker"). Opening sends
// nothing.
func OpenBlobs(role, url string) (blob.Store, error) {
	return blob.OpenWith(context.Background(), url, blobOptions(role))
}

// blobOptions: the API's requests to an object store are small (uploads up to MAX_UPLOAD_BYTES, the
// first bytes of a download), so a store that does not answer is given up on sooner there, and the client
// gets its 503 in well under a minute; a worker's parts and the completion of a 100 MP result's multipart
// upload may take longer.
func blobOptions(role string) blob.Options {
	if role == "api" {
		return blob.Options{ResponseHeaderTimeout: 15 * time.Second, MaxAttempts: 3}
	}
	return blob.Options{}
}

// defaultPool sizes the Redis pool. The API's waiting upsizes hold no connection (one pub/sub connection
// serves them all), so its pool is for short commands, sized for bursts of admissions; a worker needs a
// few per running task.
func defaultPool(role string, cfg config.Config) int {
	if role == "worker" {
		return 4*cfg.WorkerConcurrency + 16
	}
	return 256
}

// New assembles a Base from parts already open (the test environment brings its own Redis database and
// blob directory). It also configures libvips for this process.
func New(cfg config.Config, log *slog.Logger, rdb redis.UniversalClient, blobs blob.Store) *Base {
	imageops.SetLogger(log)
	imageops.Init(cfg.VipsConcurrency)
	return &Base{
		Config: cfg, Log: log, Redis: rdb, Blobs: blobs,
		Store: store.New(rdb, store.DefaultKeys),
		Registry: cancel.NewRegistry(rdb, store.DefaultKeys, cancel.Settings{
			TTL: cfg.RequestTTL, MaxOpen: cfg.MaxQueuedPerUser, MaxTombstones: cfg.MaxTombstonesPerUser,
			WaitReplicas: cfg.RedisWaitReplicas, WaitTimeout: cfg.RedisWaitTimeout,
		}),
		Metrics: obs.NewRegistry(),
	}
}

// Close releases the Redis client and the blob store's connections.
func (b *Base) Close() error {
	if c, ok := b.Blobs.(interface{ Close() error }); ok {
		c.Close()
	}
	return b.Redis.Close()
}

// background is work that runs on a context of its own, which outlives the process's main one until
// stop: listeners must keep working while the process drains.
type background struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newBackground(ctx context.Context) *background {
	c, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &background{ctx: c, cancel: cancel}
}

func (b *background) run(f func(ctx context.Context)) { b.wg.Go(func() { f(b.ctx) }) }

// stop cancels the background work and waits for it.
func (b *background) stop() {
	b.cancel()
	b.wg.Wait()
}

// waitReady waits until ready is closed, ctx ends, or within passes.
func waitReady(ctx context.Context, ready <-chan struct{}, within time.Duration, what string) error {
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(within):
		return errors.New(what + " not ready after " + within.String())
	}
}
