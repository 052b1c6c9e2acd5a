package cancel

import (
	"context"
	"errors"
	"sync"

	"github.com/redis/go-redis/v9"
)

// ErrCanceled is the cause of a running task's context when its request was canceled.
var ErrCanceled = errors.New("cancel: request canceled by the user")

// Inflight is a worker's set of running requests. A cancel published by the registry cancels the
// matching task's context, which aborts its libvips work and frees its slot.
type Inflight struct {
	rdb   redis.UniversalClient
	reg   *Registry
	ready chan struct{}

	mu    sync.Mutex
	next  int
	tasks map[string]map[int]context.CancelCauseFunc
}

func NewInflight(rdb redis.UniversalClient, reg *Registry) *Inflight {
	return &Inflight{rdb: rdb, reg: reg, ready: make(chan struct{}), tasks: map[string]map[int]context.CancelCauseFunc{}}
}

// Run listens for cancels until ctx is done.
func (f *Inflight) Run(ctx context.Context) error {
	return listen(ctx, f.rdb, f.reg.keys.Cancels(), f.ready, f.cancel, func() { f.recheck(ctx) })
}

// Ready is closed when cancels are received.
func (f *Inflight) Ready() <-chan struct{} { return f.ready }

// Track registers a request before it starts (so that no cancel falls between its start and its
// registration) and returns the context its work must run under. done unregisters it.
func (f *Inflight) Track(ctx context.Context, userID int64, requestID string) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	key := signal(userID, requestID)
	f.mu.Lock()
	f.next++
	id := f.next
	if f.tasks[key] == nil {
		f.tasks[key] = map[int]context.CancelCauseFunc{}
	}
	f.tasks[key][id] = cancel
	f.mu.Unlock()
	return ctx, func() {
		f.mu.Lock()
		delete(f.tasks[key], id)
		if len(f.tasks[key]) == 0 {
			delete(f.tasks, key)
		}
		f.mu.Unlock()
		cancel(nil)
	}
}

func (f *Inflight) cancel(key string) {
	f.mu.Lock()
	for _, c := range f.tasks[key] {
		c(ErrCanceled)
	}
	f.mu.Unlock()
}

// recheck runs after a reconnect: a cancel published while disconnected was lost, so read each running
// request's state instead.
func (f *Inflight) recheck(ctx context.Context) {
	f.mu.Lock()
	keys := make([]string, 0, len(f.tasks))
	for k := range f.tasks {
		keys = append(keys, k)
	}
	f.mu.Unlock()
	for _, k := range keys {
		uid, rid, ok := parseSignal(k)
		if !ok {
			continue
		}
		if req, err := f.reg.Get(ctx, uid, rid); err == nil && req.State == Canceled {
			f.cancel(k)
		}
	}
}
