// Package jobs is the upsize task: what the API enqueues on asynq and what the worker runs.
//
// A task carries ids only. Everything else about the request (source image, scale, model, cost, the
// id of the result image) is in the cancel registry, so a task stays small and a canceled or finished
// request can be recognised by whatever worker picks its task up.
package jobs

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// TypeUpsize is the asynq task type.
const TypeUpsize = "upsize:image"

// Queues. Three things decide a request's queue, so that one kind of work cannot hold up another:
//   - the plan: paid users' tasks are served first, so a free-user burst cannot hold them up;
//   - the cost class: small tasks (estimated at most SmallWork) have queues of their own, and every
//     worker keeps one slot that only they may take (app.NewWorker), so a 2x of a small image never waits
//     behind 8x upsizes of large ones;
//   - for large tasks, the lane: a user's first Lane open large requests go to the plan's first queue,
//     the rest to its "more" queue, which is served less often: a user with one request is not queued
//     behind another's hundred.
//
// upsize_paid and upsize_free keep the names they had before classes and lanes: tasks enqueued by an
// older version are still served.
const (
	QueuePaidSmall = "upsize_paid_small"
	QueuePaid      = "upsize_paid"
	QueuePaidMore  = "upsize_paid_more"
	QueueFreeSmall = "upsize_free_small"
	QueueFree      = "upsize_free"
	QueueFreeMore  = "upsize_free_more"
)

// SmallWork is the estimated work up to which a task is small.
const SmallWork = time.Second

// Lane is how many of a user's open large requests of one plan go to the first queue.
const Lane = 2

// Queues lists every queue the workers serve.
var Queues = []string{QueuePaidSmall, QueuePaid, QueuePaidMore, QueueFreeSmall, QueueFree, QueueFreeMore}

// QueueWeights are the asynq priorities of the queues for a worker's general slots (weighted, not strict:
// asynq tries the non-empty queues in a random order drawn by weight, so nothing starves). Paid before
// free, small before large, a user's first requests before the rest.
var QueueWeights = map[string]int{
	QueuePaidSmall: 24, QueuePaid: 12, QueuePaidMore: 4,
	QueueFreeSmall: 4, QueueFree: 2, QueueFreeMore: 1,
}

// SmallQueueWeights are the priorities of the slot reserved to small tasks.
var SmallQueueWeights = map[string]int{QueuePaidSmall: 6, QueueFreeSmall: 1}

// QueuesFor picks the queues of a request: small tasks have one queue per plan; large ones a first queue
// and a "more" queue (the registry picks between them at admission, from the user's open requests).
func QueuesFor(plan string, work time.Duration) (first, more string) {
	paid := plan == "paid"
	switch {
	case work <= SmallWork && paid:
		return QueuePaidSmall, ""
	case work <= SmallWork:
		return QueueFreeSmall, ""
	case paid:
		return QueuePaid, QueuePaidMore
	}
	return QueueFree, QueueFreeMore
}

// Asynq's Redis keys of a queue. KEDA and the backlog check read them; a test checks that asynq
// really uses them.
func PendingKey(queue string) string   { return "asynq:{" + queue + "}:pending" }
func ActiveKey(queue string) string    { return "asynq:{" + queue + "}:active" }
func ProcessedKey(queue string) string { return "asynq:{" + queue + "}:processed" }

// Payload is a task's body: the request it works for.
type Payload struct {
	UserID    int64  `json:"u"`
	RequestID string `json:"r"`
}

// TaskID is deterministic, so enqueuing the same request twice cannot make a second task.
func TaskID(userID int64, requestID string) string {
	return "u" + strconv.FormatInt(userID, 10) + ":" + requestID
}

func (p Payload) Marshal() []byte {
	b, _ := json.Marshal(p)
	return b
}

func UnmarshalPayload(b []byte) (Payload, error) {
	var p Payload
	if err := json.Unmarshal(b, &p); err != nil || p.UserID <= 0 || p.RequestID == "" {
		return Payload{}, fmt.Errorf("jobs: bad payload %q: %v", b, err)
	}
	return p, nil
}
