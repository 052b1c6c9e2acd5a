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
)

// TypeUpsize is the asynq task type.
const TypeUpsize = "upsize:image"

// Queues, by priority: paid users' tasks are served first so a free-user burst cannot hold them up.
const (
	QueuePaid = "upsize_paid"
	QueueFree = "upsize_free"
)

// QueueWeights are the asynq priorities of the queues (weighted, not strict, so free work never starves).
var QueueWeights = map[string]int{QueuePaid: 6, QueueFree: 1}

// Queues lists every queue the workers serve.
var Queues = []string{QueuePaid, QueueFree}

// QueueFor picks the queue of a user's plan.
func QueueFor(plan string) string {
	if plan == "paid" {
		return QueuePaid
	}
	return QueueFree
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
