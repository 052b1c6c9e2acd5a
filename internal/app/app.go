// Package app opens what both binaries share: configuration, JSON logger, libvips, the Redis client,
// the blob store, the metadata store and the request registry.
package app

import (
	"io"
	"log/slog"

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
	Blobs    *blob.FS
	Store    *store.Store
	Registry *cancel.Registry
}

// Open reads the configuration of role ("api" or "worker") and opens the shared parts. defaultPool sizes
// the Redis pool when REDIS_POOL_SIZE is unset.
func Open(role string, getenv func(string) string, stdout io.Writer, defaultPool func(config.Config) int) (*Base, error) {
	cfg, err := config.Load(role, getenv)
	if err != nil {
		return nil, err
	}
	log := obs.NewLogger(stdout, cfg.LogLevel, role)
	imageops.SetLogger(log)
	imageops.Init(cfg.VipsConcurrency)
	pool := cfg.RedisPoolSize
	if pool == 0 {
		pool = defaultPool(cfg)
	}
	rdb, err := redisconn.Open(cfg.RedisURL, pool)
	if err != nil {
		return nil, err
	}
	blobs, err := blob.NewFS(cfg.BlobDir)
	if err != nil {
		rdb.Close()
		return nil, err
	}
	return &Base{
		Config: cfg,
		Log:    log,
		Redis:  rdb,
		Blobs:  blobs,
		Store:  store.New(rdb, store.DefaultKeys),
		Registry: cancel.NewRegistry(rdb, store.DefaultKeys, cancel.Settings{
			TTL: cfg.RequestTTL, MaxOpen: cfg.MaxQueuedPerUser, MaxTombstones: cfg.MaxTombstonesPerUser,
		}),
	}, nil
}

// Close releases the Redis client.
func (b *Base) Close() error { return b.Redis.Close() }
