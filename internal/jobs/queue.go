package jobs

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"upsize/internal/cancel"
	"upsize/internal/store"
)

// MaxRetry is how often a task that failed for a passing reason (Redis, disk) is tried again.
// Failures that would fail again (an image that does not decode) are not retried.
const MaxRetry = 3

// TaskTimeout bounds one run of a task.
const TaskTimeout = 10 * time.Minute

// Queue is the API's side of asynq: enqueue, remove a queued task, measure the backlog.
type Queue struct {
	rdb       redis.UniversalClient
	keys      store.Keys
	client    *asynq.Client
	inspector *asynq.Inspector

	mu        sync.Mutex
	lastAt    time.Time
	lastDone  int64
	drainRate float64 // seconds of estimated work completed per second, smoothed
}

// NewQueue makes the API's queue; keys name the registry's work counters.
func NewQueue(rdb redis.UniversalClient, keys store.Keys) *Queue {
	return &Queue{rdb: rdb, keys: keys, client: asynq.NewClientFromRedisClient(rdb), inspector: asynq.NewInspectorFromRedisClient(rdb)}
}

// Enqueue adds the request's task. Enqueuing a task that already exists is not an error.
func (q *Queue) Enqueue(ctx context.Context, queue string, p Payload) error {
	t := asynq.NewTask(TypeUpsize, p.Marshal())
	_, err := q.client.EnqueueContext(ctx, t, asynq.Queue(queue), asynq.TaskID(TaskID(p.UserID, p.RequestID)),
		asynq.MaxRetry(MaxRetry), asynq.Timeout(TaskTimeout))
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return nil
	}
	return err
}

// Remove deletes a task that has not started; a task that is running or gone is left alone (the
// worker checks the registry before it starts and listens for cancels while it runs).
func (q *Queue) Remove(_ context.Context, queue, taskID string) error {
	err := q.inspector.DeleteTask(queue, taskID)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return nil
	}
	return err
}

// Position is how many tasks are ahead of a pending task in its queue (asynq pushes new tasks at the
// head of the list and takes them from its tail); ok is false when the task is not pending there.
func (q *Queue) Position(ctx context.Context, queue, taskID string) (ahead int64, ok bool) {
	var pos *redis.IntCmd
	var n *redis.IntCmd
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		pos = p.LPos(ctx, PendingKey(queue), taskID, redis.LPosArgs{})
		n = p.LLen(ctx, PendingKey(queue))
		return nil
	})
	if err != nil || pos.Err() != nil {
		return 0, false
	}
	return max(0, n.Val()-1-pos.Val()), true
}

// Backlog is what waits for the workers: the tasks not started yet, and the estimated work of every
// queued or running request (from the registry's per-queue counters).
type Backlog struct {
	Tasks int64
	Work  time.Duration
}

// Backlog reads the backlog over every queue.
func (q *Queue) Backlog(ctx context.Context) (Backlog, error) {
	var work *redis.MapStringStringCmd
	cmds, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, name := range Queues {
			p.LLen(ctx, PendingKey(name))
		}
		work = p.HGetAll(ctx, q.keys.Work())
		return nil
	})
	if err != nil {
		return Backlog{}, err
	}
	var b Backlog
	for _, c := range cmds[:len(Queues)] {
		b.Tasks += c.(*redis.IntCmd).Val()
	}
	for _, v := range work.Val() {
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
			b.Work += time.Duration(ms) * time.Millisecond
		}
	}
	return b, nil
}

// RetryAfter estimates, in whole seconds between 1 and 300, how long the workers take to get through
// work, from the rate at which they have been completing estimated work lately (30 while nothing has
// been measured yet).
func (q *Queue) RetryAfter(ctx context.Context, work time.Duration) int {
	return retryAfter(work, q.measureDrain(ctx))
}

// retryAfter is how many whole seconds draining work takes at rate (seconds of estimated work completed
// per second, about the number of busy slots): at least 1, at most 300, 30 while no rate is known.
func retryAfter(work time.Duration, rate float64) int {
	if rate <= 0 {
		return 30
	}
	return int(math.Min(300, math.Max(1, math.Ceil(work.Seconds()/rate))))
}

// measureDrain updates the smoothed drain rate, in work-seconds per second, at most once a second.
func (q *Queue) measureDrain(ctx context.Context) float64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := time.Now()
	if now.Sub(q.lastAt) < time.Second {
		return q.drainRate
	}
	done, err := q.rdb.Get(ctx, q.keys.WorkDone()).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return q.drainRate
	}
	if !q.lastAt.IsZero() && done >= q.lastDone {
		r := float64(done-q.lastDone) / 1000 / now.Sub(q.lastAt).Seconds()
		q.drainRate = 0.7*q.drainRate + 0.3*r
	}
	q.lastAt, q.lastDone = now, done
	return q.drainRate
}

// Sweep enqueues the tasks of requests that were admitted (credits reserved) but whose enqueue was never
// confirmed, because the API process that admitted them died in between. Enqueuing is idempotent (a
// task's id is its request's), so every API process may sweep at once.
func (q *Queue) Sweep(ctx context.Context, reg *cancel.Registry, olderThan time.Duration) (enqueued int, err error) {
	reqs, err := reg.Unenqueued(ctx, time.Now().Add(-olderThan), 200)
	if err != nil {
		return 0, err
	}
	for _, r := range reqs {
		if r.State == cancel.Queued {
			if err := q.Enqueue(ctx, r.Queue, Payload{UserID: r.UserID, RequestID: r.ID}); err != nil {
				return enqueued, err
			}
			enqueued++
		}
		// Running or finished requests have, or had, their task; expired ones are gone.
		if err := reg.Enqueued(ctx, r.UserID, r.ID); err != nil {
			return enqueued, err
		}
	}
	return enqueued, nil
}

// RunSweeper sweeps every interval until ctx is done.
func (q *Queue) RunSweeper(ctx context.Context, reg *cancel.Registry, interval, olderThan time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, err := q.Sweep(ctx, reg, olderThan)
			if err != nil {
				log.Warn("sweeping unenqueued requests", "err", err)
			} else if n > 0 {
				log.Warn("enqueued requests whose admitting API process died before enqueuing", "count", n)
			}
		}
	}
}
