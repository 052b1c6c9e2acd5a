package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"upsize/internal/cancel"
	"upsize/internal/imageops"
	"upsize/internal/jobs"
	"upsize/internal/store"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
)

// counting wraps imageops.Upsize: it counts runs, optionally fails the first ones, and blocks while
// hold is not closed (or until its context ends).
type counting struct {
	runs     atomic.Int32
	failures int32 // the first runs that fail with a passing error
	hold     chan struct{}
	started  chan struct{}
}

func (c *counting) upsize(ctx context.Context, src []byte, w io.Writer, p imageops.Params) (imageops.Result, error) {
	n := c.runs.Add(1)
	if c.started != nil {
		select {
		case c.started <- struct{}{}:
		default:
		}
	}
	if n <= c.failures {
		return imageops.Result{}, errors.New("disk hiccup")
	}
	if c.hold != nil {
		select {
		case <-c.hold:
		case <-ctx.Done():
			return imageops.Result{}, ctx.Err()
		}
	}
	return imageops.Upsize(ctx, src, w, p)
}

func inspector(e *testenv.Env) *asynq.Inspector { return asynq.NewInspectorFromRedisClient(e.RDB) }

// The backlog check and the metrics read asynq's lists by name: they must be the names asynq writes.
func TestQueueKeysAreAsynqs(t *testing.T) {
	c := &counting{hold: make(chan struct{}), started: make(chan struct{}, 1)}
	e := testenv.New(t, testenv.Options{NoWorker: true, Upsize: c.upsize})
	e.Configure()
	u := e.NewUser("paid", 100)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(8, 8)))
	ctx := context.Background()
	// One admitted request in each queue (the admission would pick the queue; here each is named).
	for i, q := range jobs.Queues {
		rid := fmt.Sprintf("k-%d", i)
		res, err := e.Registry.Admit(ctx, cancel.Admission{UserID: u.ID, RequestID: rid, ImageID: id, Scale: "2x",
			Model: "lanczos3", Cost: 1, Work: time.Second, Queue: q, TaskID: jobs.TaskID(u.ID, rid)})
		if err != nil || !res.Admitted {
			t.Fatalf("admit: %+v %v", res, err)
		}
		if err := e.Queue.Enqueue(ctx, q, jobs.Payload{UserID: u.ID, RequestID: rid}); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range jobs.Queues {
		if n := e.RDB.LLen(ctx, jobs.PendingKey(q)).Val(); n != 1 {
			t.Errorf("LLEN %s = %d, want 1", jobs.PendingKey(q), n)
		}
	}
	if n, _ := e.Queue.Backlog(ctx); n.Tasks != int64(len(jobs.Queues)) || n.Work != time.Duration(len(jobs.Queues))*time.Second {
		t.Errorf("Backlog = %+v, want %d tasks and as many seconds", n, len(jobs.Queues))
	}
	e.StartWorker()
	<-c.started
	deadline := time.Now().Add(5 * time.Second)
	for active := int64(0); active == 0; {
		for _, q := range jobs.Queues {
			active += e.RDB.LLen(ctx, jobs.ActiveKey(q)).Val()
		}
		if time.Now().After(deadline) {
			t.Fatal("no task in asynq's active lists while a handler runs")
		}
	}
	close(c.hold)
}

// Small tasks have a queue per plan; large ones a first and a "more" queue per plan.
func TestQueuesFor(t *testing.T) {
	for _, c := range []struct {
		plan        string
		work        time.Duration
		first, more string
	}{
		{"paid", 20 * time.Millisecond, jobs.QueuePaidSmall, ""},
		{"paid", jobs.SmallWork, jobs.QueuePaidSmall, ""},
		{"paid", jobs.SmallWork + 1, jobs.QueuePaid, jobs.QueuePaidMore},
		{"free", 20 * time.Millisecond, jobs.QueueFreeSmall, ""},
		{"free", 10 * time.Second, jobs.QueueFree, jobs.QueueFreeMore},
	} {
		if f, m := jobs.QueuesFor(c.plan, c.work); f != c.first || m != c.more {
			t.Errorf("QueuesFor(%s, %s) = %s, %s; want %s, %s", c.plan, c.work, f, m, c.first, c.more)
		}
	}
	// Every queue is served by the general slots, small ones also by the reserved slot.
	for _, q := range jobs.Queues {
		if jobs.QueueWeights[q] == 0 {
			t.Errorf("%s has no weight", q)
		}
	}
	for q := range jobs.SmallQueueWeights {
		if q != jobs.QueuePaidSmall && q != jobs.QueueFreeSmall {
			t.Errorf("the small slot serves %s", q)
		}
	}
}

// A canceled running task stops, frees its slot, is not retried, and leaves nothing behind.
func TestCanceledRunningTaskIsNeverRetried(t *testing.T) {
	c := &counting{hold: make(chan struct{}), started: make(chan struct{}, 1)}
	var handlerRuns atomic.Int32
	e := testenv.New(t, testenv.Options{Upsize: c.upsize, Observe: func(r jobs.TaskReport) {
		if r.Payload.RequestID == "run-cancel" {
			handlerRuns.Add(1)
		}
	}})
	e.Configure()
	u := e.NewUser("paid", 4)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	answer := make(chan *testenv.Resp, 1)
	go func() { answer <- e.Upsize(context.Background(), u.Key, id, "8x", "run-cancel") }()
	<-c.started
	e.Want(e.Cancel(u.Key, "run-cancel"), 200, "")
	r := <-answer
	e.Want(r, 409, "user_canceled_request")
	// asynq would retry a handler that returned its context's error after ~100 ms here; wait well past it.
	time.Sleep(time.Second)
	if n, h := c.runs.Load(), handlerRuns.Load(); n != 1 || h != 1 {
		t.Fatalf("image operation ran %d times and the task handler %d times, want 1 and 1", n, h)
	}
	for _, q := range jobs.Queues {
		info, err := inspector(e).GetQueueInfo(q)
		if err == nil && info.Pending+info.Active+info.Retry+info.Archived+info.Scheduled != 0 {
			t.Fatalf("queue %s still holds the canceled task: %+v", q, info)
		}
	}
	req, _ := e.Registry.Get(context.Background(), u.ID, "run-cancel")
	if _, err := e.Blobs.Open(context.Background(), store.BlobKey(req.ResultID)); err == nil {
		t.Fatal("bytes of the canceled result were left behind")
	}
	if got := e.Credits(u.ID); got != 4 {
		t.Fatalf("credits %d, want 4", got)
	}
}

// A canceled queued task is removed, and never runs even when a worker comes later.
func TestCanceledQueuedTaskNeverRuns(t *testing.T) {
	c := &counting{}
	e := testenv.New(t, testenv.Options{NoWorker: true, WaitTimeout: 10 * time.Millisecond, Upsize: c.upsize})
	e.Configure()
	u := e.NewUser("paid", 1)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	e.Want(e.Upsize(context.Background(), u.Key, id, "", "queued-cancel"), 202, "")
	e.Want(e.Cancel(u.Key, "queued-cancel"), 200, "")
	if n, _ := e.Queue.Backlog(context.Background()); n.Tasks != 0 || n.Work != 0 {
		t.Fatalf("backlog %+v after cancel: the task was not removed, or its work still counted", n)
	}
	e.StartWorker()
	time.Sleep(300 * time.Millisecond)
	if n := c.runs.Load(); n != 0 {
		t.Fatalf("canceled task ran %d times", n)
	}
	if got := e.Credits(u.ID); got != 1 {
		t.Fatalf("credits %d", got)
	}
}

// A passing failure is retried, and the request completes once, charged once.
func TestPassingFailureIsRetried(t *testing.T) {
	c := &counting{failures: 1}
	e := testenv.New(t, testenv.Options{Upsize: c.upsize})
	e.Configure()
	u := e.NewUser("paid", 3)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	e.Want(e.Upsize(context.Background(), u.Key, id, "", "retry-1"), 201, "")
	if n := c.runs.Load(); n != 2 {
		t.Fatalf("runs %d, want 2 (one failure, one success)", n)
	}
	if got := e.Credits(u.ID); got != 2 {
		t.Fatalf("credits %d, want 2", got)
	}
}

// When retries run out, the request fails with 500 and is refunded.
func TestExhaustedRetriesFailAndRefund(t *testing.T) {
	c := &counting{failures: 1000}
	e := testenv.New(t, testenv.Options{Upsize: c.upsize})
	e.Configure()
	u := e.NewUser("paid", 3)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	e.Want(e.Upsize(context.Background(), u.Key, id, "", "doomed"), 500, "upsize_failed")
	if n := c.runs.Load(); n != jobs.MaxRetry+1 {
		t.Fatalf("runs %d, want %d", n, jobs.MaxRetry+1)
	}
	if got := e.Credits(u.ID); got != 3 {
		t.Fatalf("credits %d, want 3 (refunded)", got)
	}
}

// An API that dies after reserving credits but before enqueuing loses nothing: the sweeper enqueues the
// request's task, and it completes once.
func TestSweeperEnqueuesWhatADeadAPILeftBehind(t *testing.T) {
	e := testenv.New(t, testenv.Options{})
	e.Configure()
	u := e.NewUser("paid", 5)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	ctx := context.Background()
	// The dead API's half: admission only.
	res, err := e.Registry.Admit(ctx, cancel.Admission{UserID: u.ID, RequestID: "orphan", ImageID: id, Scale: "2x",
		Model: "lanczos3", Cost: 1, Queue: jobs.QueuePaid, TaskID: jobs.TaskID(u.ID, "orphan")})
	if err != nil || !res.Admitted {
		t.Fatalf("admit: %+v %v", res, err)
	}
	// A normal request is confirmed and is not touched.
	e.Want(e.Upsize(ctx, u.Key, id, "", "normal"), 201, "")
	if n, err := e.Queue.Sweep(ctx, e.Registry, time.Hour); err != nil || n != 0 {
		t.Fatalf("sweep of fresh entries: %d, %v", n, err)
	}
	n, err := e.Queue.Sweep(ctx, e.Registry, 0)
	if err != nil || n != 1 {
		t.Fatalf("sweep enqueued %d (%v), want 1", n, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := e.Registry.Get(ctx, u.ID, "orphan")
		if req.State == cancel.Completed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan request is %s", req.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n, _ := e.Queue.Sweep(ctx, e.Registry, 0); n != 0 {
		t.Fatalf("second sweep enqueued %d", n)
	}
	if c := e.Credits(u.ID); c != 3 {
		t.Fatalf("credits %d, want 3 (two completed)", c)
	}
}

// A task whose request's state was lost (Redis lost the hash while the task survived) is not skipped with
// its credits kept: the reservation is refunded and the request reads as failed.
func TestTaskOfALostRequestRefunds(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, WaitTimeout: 50 * time.Millisecond})
	e.Configure()
	u := e.NewUser("paid", 5)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	ctx := context.Background()
	e.Want(e.Upsize(ctx, u.Key, id, "4x", "forgotten"), 202, "")
	if c := e.Credits(u.ID); c != 3 {
		t.Fatalf("credits %d after reserving 2", c)
	}
	if err := e.RDB.Del(ctx, store.DefaultKeys.Request(u.ID, "forgotten")).Err(); err != nil {
		t.Fatal(err)
	}
	e.StartWorker()
	deadline := time.Now().Add(10 * time.Second)
	for e.Credits(u.ID) != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("credits %d: the lost request's reservation was kept", e.Credits(u.ID))
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := e.RequestState(u.Key, "forgotten")
	if r.Status != 200 || r.JSON()["state"] != "failed" {
		t.Fatalf("lost request reads %s", r)
	}
	if n, _ := e.Registry.OpenCount(ctx, u.ID); n != 0 {
		t.Fatalf("%d open requests left", n)
	}
}
