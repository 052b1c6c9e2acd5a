package callback

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/hibiken/asynq"

	"upsize/internal/cancel"
)

// dispatchBatch is how many due callbacks one read takes; a pass reads at most dispatchBatches of them,
// so a burst is drained in a few passes without one pass holding on for long.
const (
	dispatchBatch   = 100
	dispatchBatches = 10
)

// RunDispatcher moves due callbacks into delivery tasks every dispatch interval until ctx is done. Every
// worker runs one: passes are idempotent (a task's id is its request's, and a due callback is removed
// only once its task exists), so any number may run at once and none is a single point of failure.
func (d *Deliverer) RunDispatcher(ctx context.Context) {
	t := time.NewTicker(d.o.dispatchEvery)
	defer t.Stop()
	for {
		if _, err := d.Dispatch(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("dispatching callbacks", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Dispatch is one pass: each due callback becomes a task (unless one exists), and only then leaves the
// due set, so a crash in between makes the next pass enqueue it again (a conflict: harmless). It returns
// how many tasks it made.
func (d *Deliverer) Dispatch(ctx context.Context) (enqueued int, err error) {
	for range dispatchBatches {
		due, err := d.reg.DueCallbacks(ctx, dispatchBatch)
		if err != nil {
			return enqueued, err
		}
		for _, r := range due {
			made, err := d.dispatchOne(ctx, r.UserID, r.ID)
			if err != nil {
				return enqueued, err
			}
			if made {
				enqueued++
			}
		}
		if len(due) < dispatchBatch {
			break
		}
	}
	return enqueued, nil
}

func (d *Deliverer) dispatchOne(ctx context.Context, userID int64, requestID string) (made bool, err error) {
	req, err := d.reg.Get(ctx, userID, requestID)
	switch {
	case errors.Is(err, cancel.ErrNotFound):
		d.count(resultDropped)
		d.log.Warn("callback dropped", "request_id", requestID, "user_id", userID, "result", resultDropped,
			"reason", "request state expired before its callback was queued")
	case err != nil:
		return false, err
	case !req.State.Terminal() || req.Callback == "":
		// Only outcome scripts mark a callback due, and only for requests that have one.
		d.count(resultDropped)
		d.log.Warn("callback dropped", "request_id", requestID, "user_id", userID, "result", resultDropped,
			"reason", "request has no outcome or no callback URL", "state", string(req.State))
	default:
		if made, err = d.enqueue(ctx, req); err != nil {
			return false, err
		}
	}
	return made, d.reg.CallbackQueued(ctx, userID, requestID)
}

// enqueue makes the delivery task of req; made is false when it already existed.
func (d *Deliverer) enqueue(ctx context.Context, req cancel.Request) (made bool, err error) {
	p := payload{UserID: req.UserID, RequestID: req.ID, Created: req.Created.UnixMilli()}
	b, _ := json.Marshal(p)
	_, err = d.client.EnqueueContext(ctx, asynq.NewTask(TypeCallback, b), asynq.Queue(Queue), asynq.TaskID(taskID(req)),
		asynq.MaxRetry(d.o.maxRetry), asynq.Timeout(d.o.attemptTimeout+30*time.Second), asynq.Retention(Retention))
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return false, nil
	}
	return err == nil, err
}
