package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynqmon"
	"github.com/redis/go-redis/v9"

	"upsize/internal/callback"
	"upsize/internal/cancel"
	"upsize/internal/httpapi"
	"upsize/internal/jobs"
	"upsize/internal/metrics"
	"upsize/internal/obs"
	"upsize/internal/store"
)

// API is the HTTP front door: its handler, the hub that wakes waiting upsizes, the queue, and the
// sweeper that enqueues what a dead API admitted.
type API struct {
	Base    *Base
	Handler http.Handler
	Hub     *cancel.Hub
	Queue   *jobs.Queue

	bg          *background
	draining    atomic.Bool
	stopWaiting chan struct{}
	stopOnce    sync.Once
}

// NewAPI wires the API from b's configuration.
func NewAPI(b *Base) (*API, error) {
	cfg := b.Config
	allow, err := callback.NewAllowlist(cfg.CallbackAllowedHosts)
	if err != nil {
		return nil, fmt.Errorf("CALLBACK_ALLOWED_HOSTS: %w", err)
	}
	a := &API{Base: b, Hub: cancel.NewHub(b.Redis, b.Registry), Queue: jobs.NewQueue(b.Redis, store.DefaultKeys), stopWaiting: make(chan struct{})}
	a.Handler = httpapi.NewHandler(&httpapi.Deps{
		Log: b.Log, Store: b.Store, Registry: b.Registry, Hub: a.Hub, Queue: a.Queue, Blobs: b.Blobs,
		Limits: httpapi.Limits{
			MaxUploadBytes: cfg.MaxUploadBytes, MaxInputPixels: cfg.MaxInputPixels, MaxOutputPixels: cfg.MaxOutputPixels,
			QueueMaxBacklog: cfg.QueueMaxBacklog, QueueMaxBacklogWork: cfg.QueueMaxBacklogWork, WaitTimeout: cfg.UpsizeWaitTimeout,
			BodyTimeout: cfg.BodyTimeout, UploadMemory: cfg.UploadMemory, ValidateMemory: cfg.ValidateMemory,
			ValidateTimeout: cfg.ValidateTimeout, GateWait: cfg.UploadWait, FileRedirect: cfg.BlobRedirect,
			EventHeartbeat: cfg.EventHeartbeat,
		},
		AdminToken:      cfg.AdminToken,
		Ready:           a.ready,
		StopWaiting:     a.stopWaiting,
		CallbackAllowed: allow.Check,
		QueuesUI: asynqmon.New(asynqmon.Options{
			RootPath: "/admin/queues", RedisConnOpt: sharedClient{b.Redis}, ReadOnly: cfg.QueuesUIReadOnly,
		}),
		MetricsHandler: obs.Handler(b.Metrics, b.Log),
		Measure: metrics.NewAPI(b.Metrics, b.Redis, metrics.Backlog{
			Queues: jobs.Queues, PendingKey: jobs.PendingKey, ActiveKey: jobs.ActiveKey,
			WorkKey: store.DefaultKeys.Work(), WorkDoneKey: store.DefaultKeys.WorkDone(),
		}),
	})
	return a, nil
}

// sharedClient gives asynqmon the process's Redis client (asynq.RedisConnOpt). asynqmon's Close would
// close it: it is never called.
type sharedClient struct{ rdb redis.UniversalClient }

func (s sharedClient) MakeRedisClient() any { return s.rdb }

// sweepEvery and sweepAfter: an API that dies between reserving credits and enqueuing leaves a request
// behind; any API finds it after sweepAfter.
const (
	sweepEvery = 10 * time.Second
	sweepAfter = 30 * time.Second
)

// Start subscribes to outcomes and starts the sweeper. Readiness stays 503 until the subscription is up
// (Hub.Ready), so an API started while Redis is away waits for it instead of exiting.
func (a *API) Start(ctx context.Context) {
	a.bg = newBackground(ctx)
	log := a.Base.Log
	a.bg.run(func(ctx context.Context) {
		if err := a.Hub.Run(ctx); err != nil {
			log.Error("outcome subscription ended", "err", err)
		}
	})
	a.bg.run(func(ctx context.Context) { a.Queue.RunSweeper(ctx, a.Base.Registry, sweepEvery, sweepAfter, log) })
}

// Drain turns readiness to 503: load balancers stop sending.
func (a *API) Drain() { a.draining.Store(true) }

// StopWaiting makes every waiting upsize answer 202 now.
func (a *API) StopWaiting() { a.stopOnce.Do(func() { close(a.stopWaiting) }) }

// Stop ends the background work.
func (a *API) Stop() {
	if a.bg != nil {
		a.bg.stop()
	}
}

func (a *API) ready(ctx context.Context) error {
	if a.draining.Load() {
		return errors.New("draining")
	}
	select {
	case <-a.Hub.Ready():
	default:
		return errors.New("not yet subscribed to outcomes")
	}
	return a.Base.Redis.Ping(ctx).Err()
}
