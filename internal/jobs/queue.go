package jobs

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// MaxRetry is how often a task that failed for a passing reason (Redis, disk) is tried again.
// Failures that would fail again (an image that does not decode) are not retried.
const MaxRetry = 3

// TaskTimeout bounds one run of a task.
const TaskTimeout = 10 * time.Minute

// Queue is the API's side of asynq: enqueue, remove a queued task, measure the backlog.
type Queue struct {
	rdb       redis.UniversalClient
	client    *asynq.Client
	inspector *asynq.Inspector

	mu        sync.Mutex
	lastAt    time.Time
	lastDone  int64
	drainRate float64 // tasks per second, smoothed
}

func NewQueue(rdb redis.UniversalClient) *Queue {
	return &Queue{rdb: rdb, client: asynq.NewClientFromRedisClient(rdb), inspector: asynq.NewInspectorFromRedisClient(rdb)}
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

// Backlog is the number of tasks waiting for a worker, over every queue.
func (q *Queue) Backlog(ctx context.Context) (pending int64, err error) {
	cmds, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, name := range Queues {
			p.LLen(ctx, PendingKey(name))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, c := range cmds {
		pending += c.(*redis.IntCmd).Val()
	}
	return pending, nil
}

// RetryAfter estimates how long until the backlog is back under max, from the rate at which workers
// have been finishing tasks (asynq's processed counters), in whole seconds between 1 and 300.
func (q *Queue) RetryAfter(ctx context.Context, backlog, max int64) int {
	rate := q.measureDrain(ctx)
	excess := float64(backlog-max) + 1
	if rate <= 0 {
		return 30
	}
	return int(math.Min(300, math.Max(1, math.Ceil(excess/rate))))
}

// measureDrain updates the smoothed drain rate at most once a second.
func (q *Queue) measureDrain(ctx context.Context) float64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := time.Now()
	if now.Sub(q.lastAt) < time.Second {
		return q.drainRate
	}
	var done int64
	for _, name := range Queues {
		n, err := q.rdb.Get(ctx, ProcessedKey(name)).Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			return q.drainRate
		}
		done += n
	}
	if !q.lastAt.IsZero() && done >= q.lastDone {
		r := float64(done-q.lastDone) / now.Sub(q.lastAt).Seconds()
		q.drainRate = 0.7*q.drainRate + 0.3*r
	}
	q.lastAt, q.lastDone = now, done
	return q.drainRate
}
