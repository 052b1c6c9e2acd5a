package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"upsize/internal/jobs"
	"upsize/internal/policy"
	"upsize/internal/store"
)

type fakeImage struct {
	W, H   int
	Format string
}

// fakeScheduler serves the fake API's upsizes the way the service does, in miniature, for the scenarios:
// each request goes to the queue the service would pick (its class from policy.DefaultWork and
// jobs.SmallWork; a user's first jobs.Lane open large requests on the first queue, the rest on the
// "more" one), is recorded where the service records it (the registry's hash: queue, state, created,
// started, finished; asynq's pending and active lists), and runs on one slot for large tasks or one for
// small ones, for its estimated work divided by speedup. A cancel ends a queued request (409); a running
// one completes. Which queued request takes a free slot is Go's choice, not asynq's weighted draw: the
// tests check the tool, not the service's order.
type fakeScheduler struct {
	rdb          *redis.Client
	speedup      float64
	large, small chan struct{}

	mu      sync.Mutex
	lanes   map[int64]int            // user → open large requests
	waiting map[string]chan struct{} // "<user>/<rid>" of a queued request → closed by its cancel
}

func newFakeScheduler(rdb *redis.Client, speedup float64) *fakeScheduler {
	return &fakeScheduler{rdb: rdb, speedup: speedup, large: make(chan struct{}, 1), small: make(chan struct{}, 1),
		lanes: map[int64]int{}, waiting: map[string]chan struct{}{}}
}

func nowMillis() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

func (s *fakeScheduler) upsize(w http.ResponseWriter, r *http.Request, user int64, plan, rid string, im fakeImage, scale string) {
	ctx := context.WithoutCancel(r.Context())
	f, _ := policy.ScaleFactor(scale) // a bad scale is already one of the fake's problems
	work := policy.DefaultWork.Estimate(im.Format, int64(im.W)*int64(im.H)*int64(f*f))
	first, more := jobs.QueuesFor(plan, work)
	id, key := fmt.Sprint(user, "/", rid), store.DefaultKeys.Request(user, rid)
	canceled := make(chan struct{})
	s.mu.Lock()
	queue, slot := first, s.small
	if more != "" {
		if s.lanes[user] >= jobs.Lane {
			queue = more
		}
		s.lanes[user]++
		slot = s.large
	}
	s.waiting[id] = canceled
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.waiting, id)
		if more != "" {
			s.lanes[user]--
		}
	}()
	s.rdb.HSet(ctx, key, "state", "queued", "queue", queue, "created", nowMillis())
	s.rdb.RPush(ctx, jobs.PendingKey(queue), id)
	stillQueued := false
	select {
	case <-canceled:
	case slot <- struct{}{}:
		s.mu.Lock()
		_, stillQueued = s.waiting[id]
		delete(s.waiting, id) // running: a cancel comes too late
		s.mu.Unlock()
		if !stillQueued {
			<-slot
		}
	}
	s.rdb.LRem(ctx, jobs.PendingKey(queue), 1, id)
	if !stillQueued {
		s.rdb.HSet(ctx, key, "state", "canceled", "finished", nowMillis())
		fail(w, http.StatusConflict, "user_canceled_request")
		return
	}
	s.rdb.RPush(ctx, jobs.ActiveKey(queue), id)
	s.rdb.HSet(ctx, key, "state", "running", "started", nowMillis())
	time.Sleep(time.Duration(float64(work) / s.speedup))
	s.rdb.HSet(ctx, key, "state", "completed", "finished", nowMillis())
	s.rdb.LRem(ctx, jobs.ActiveKey(queue), 1, id)
	<-slot
	answer(w, http.StatusCreated, map[string]any{"image": dto(9000, im.W*f, im.H*f, scale, user)})
}

func (s *fakeScheduler) cancel(w http.ResponseWriter, _ *http.Request, user int64, rid string) {
	s.mu.Lock()
	ch, queued := s.waiting[fmt.Sprint(user, "/", rid)]
	if queued {
		close(ch)
		delete(s.waiting, fmt.Sprint(user, "/", rid))
	}
	s.mu.Unlock()
	if !queued {
		fail(w, http.StatusConflict, "request_already_completed")
		return
	}
	answer(w, http.StatusOK, map[string]any{"success": true, "code": 200, "data": "canceled"})
}
