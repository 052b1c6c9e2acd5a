package callback

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"upsize/internal/cancel"
	"upsize/internal/dto"
	"upsize/internal/store"
)

// wantBody is what GET /api/requests/{requestId} answers for req: what the callback must carry.
func (f *fixture) wantBody(req cancel.Request) []byte {
	f.t.Helper()
	state, err := dto.FromRequest(f.ctx, f.st, req)
	if err != nil {
		f.t.Fatal(err)
	}
	b, err := json.Marshal(state)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// checkDelivery checks one delivery of req: signature, headers, body.
func (f *fixture) checkDelivery(d delivery, req cancel.Request) {
	f.t.Helper()
	if err := Verify(f.secret, d.header.Get(HeaderSignature), d.body, time.Minute, time.Now()); err != nil {
		f.t.Errorf("signature %q: %v", d.header.Get(HeaderSignature), err)
	}
	if got, want := string(d.body), string(f.wantBody(req)); got != want {
		f.t.Errorf("body\n got %s\nwant %s", got, want)
	}
	for h, want := range map[string]string{
		"Content-Type": "application/json", "User-Agent": UserAgent,
		HeaderEvent: string(req.State), HeaderDelivery: DeliveryID(req),
	} {
		if got := d.header.Get(h); got != want {
			f.t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
}

// (a) A completed request's callback arrives once, signed, with the body of GET /api/requests.
func TestCompletedCallbackArrivesOnceSigned(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, nil)
	d := f.deliverer([]string{rc.hostPort()})
	req := f.complete("done-1", rc.url("/hooks/upsize?token=receiver-token"))

	waitFor(t, 10*time.Second, "the callback", func() bool { return len(rc.deliveries()) == 1 })
	time.Sleep(300 * time.Millisecond) // nothing more comes
	got := rc.deliveries()
	if len(got) != 1 {
		t.Fatalf("%d deliveries, want 1", len(got))
	}
	f.checkDelivery(got[0], req)
	if got[0].path != "/hooks/upsize?token=receiver-token" {
		t.Errorf("path %q", got[0].path)
	}
	var body map[string]any
	if err := json.Unmarshal(got[0].body, &body); err != nil || body["state"] != "completed" || body["requestId"] != "done-1" || body["image"] == nil {
		t.Errorf("body %s: %v", got[0].body, err)
	}
	if n := f.due(); n != 0 {
		t.Errorf("%d callbacks still due", n)
	}
	waitFor(t, 2*time.Second, "the metric", func() bool { return counter(d, resultDelivered) == 1 })

	logs := f.logs.String()
	if !strings.Contains(logs, `"msg":"callback delivered"`) || !strings.Contains(logs, `"request_id":"done-1"`) ||
		!strings.Contains(logs, `"attempt":1`) || !strings.Contains(logs, `"status":200`) {
		t.Errorf("no delivery log line:\n%s", logs)
	}
	if strings.Contains(logs, f.secret) || strings.Contains(logs, "receiver-token") {
		t.Errorf("logs hold a secret:\n%s", logs)
	}
}

// (b) 500, 500, 200: three attempts of the same delivery, each signed afresh, then nothing more.
func TestRetriesUntil2xxWithTheSameDeliveryID(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n < 2 {
			http.Error(w, "down", http.StatusInternalServerError)
		}
	})
	d := f.deliverer([]string{rc.hostPort()})
	req := f.complete("retry-1", rc.url("/hook?token=receiver-token"))

	waitFor(t, 10*time.Second, "three attempts", func() bool { return len(rc.deliveries()) == 3 })
	waitFor(t, 2*time.Second, "the delivery to be recorded", func() bool { return counter(d, resultDelivered) == 1 })
	time.Sleep(300 * time.Millisecond)
	got := rc.deliveries()
	if len(got) != 3 {
		t.Fatalf("%d attempts, want 3", len(got))
	}
	for _, g := range got {
		f.checkDelivery(g, req)
	}
	if n := counter(d, resultFailed); n != 2 {
		t.Errorf("failed_attempt = %v, want 2", n)
	}
	logs := f.logs.String()
	for _, want := range []string{`"attempt":1`, `"attempt":2`, `"attempt":3`, `"status":500`, `"msg":"callback attempt failed"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, f.secret) || strings.Contains(logs, "receiver-token") {
		t.Errorf("logs hold a secret:\n%s", logs)
	}
	archived, _ := f.inspector().ListArchivedTasks(Queue)
	if len(archived) != 0 {
		t.Errorf("%d archived tasks", len(archived))
	}
}

// (c) A receiver that hangs: each attempt ends at the attempt timeout, and work on other queues goes on
// while every callback slot is held.
func TestHangingReceiverTimesOutAndHoldsOnlyCallbackSlots(t *testing.T) {
	f := newFixture(t)
	release := make(chan struct{})
	var hanging atomic.Int32
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n < 2 { // the first attempt of each of the two callbacks hangs
			hanging.Add(1)
			defer hanging.Add(-1)
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}
	})
	t.Cleanup(func() { close(release) }) // before the servers stop (cleanups run last first)

	// Upsize work: a server of its own on an upsize queue, as the worker has.
	const upsizeQueue = "upsize_paid_small"
	upsizeDone := make(chan time.Time, 1)
	upsizeSrv := asynq.NewServerFromRedisClient(f.rdb, asynq.Config{
		Concurrency: 1, Queues: map[string]int{upsizeQueue: 1}, TaskCheckInterval: 5 * time.Millisecond,
	})
	if err := upsizeSrv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		upsizeDone <- time.Now()
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(upsizeSrv.Shutdown)

	const timeout = 400 * time.Millisecond
	d := f.deliverer([]string{rc.hostPort()}, WithSlots(2), WithAttemptTimeout(timeout))
	reqs := []cancel.Request{f.complete("hang-1", rc.url("/a")), f.complete("hang-2", rc.url("/b"))}
	waitFor(t, 10*time.Second, "both callback slots to hang", func() bool { return hanging.Load() == 2 })

	start := time.Now()
	if _, err := asynq.NewClientFromRedisClient(f.rdb).Enqueue(asynq.NewTask("upsize:image", []byte(`{}`)), asynq.Queue(upsizeQueue)); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-upsizeDone:
		if h := hanging.Load(); h != 2 {
			t.Errorf("upsize ran after the callbacks stopped hanging (%d hanging)", h)
		}
		t.Logf("upsize task done in %s while both callback slots hang", at.Sub(start))
	case <-time.After(5 * time.Second):
		t.Fatal("the upsize task waited for the hanging callbacks")
	}

	waitFor(t, 10*time.Second, "the retries to succeed", func() bool { return counter(d, resultDelivered) == 2 })
	got := rc.deliveries()
	if len(got) != 4 {
		t.Fatalf("%d attempts, want 4", len(got))
	}
	// Each hanging attempt was cut at the timeout: its retry came after timeout + retry delay, not later
	// than a generous bound.
	first := map[string]time.Time{}
	for _, g := range got {
		id := g.header.Get(HeaderDelivery)
		if t0, ok := first[id]; !ok {
			first[id] = g.at
		} else if gap := g.at.Sub(t0); gap < timeout || gap > timeout+3*time.Second {
			t.Errorf("%s retried %s after its hanging attempt (timeout %s)", id, gap, timeout)
		}
	}
	if len(first) != 2 {
		t.Errorf("delivery ids %v", first)
	}
	for _, r := range reqs {
		if _, ok := first[DeliveryID(r)]; !ok {
			t.Errorf("no delivery of %s", r.ID)
		}
	}
	if n := counter(d, resultFailed); n != 2 {
		t.Errorf("failed_attempt = %v, want 2", n)
	}
}

// (e) Two dispatchers at once (two workers) make one task per due callback, and each is delivered once.
func TestTwoDispatchersEnqueueEachCallbackOnce(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, nil)
	const n = 60
	for i := range n {
		f.cancelReq(f.user, fmt.Sprintf("race-%d", i), rc.url("/hook"))
	}
	if got := f.due(); got != n {
		t.Fatalf("%d due, want %d", got, n)
	}
	d1, d2 := f.newDeliverer([]string{rc.hostPort()}), f.newDeliverer([]string{rc.hostPort()})

	var made atomic.Int64
	var wg sync.WaitGroup
	startLine := make(chan struct{})
	for _, d := range []*Deliverer{d1, d2, d1, d2} { // two passes per dispatcher, all at once
		wg.Go(func() {
			<-startLine
			k, err := d.Dispatch(f.ctx)
			if err != nil {
				t.Error(err)
			}
			made.Add(int64(k))
		})
	}
	close(startLine)
	wg.Wait()
	if made.Load() != n {
		t.Errorf("dispatchers made %d tasks, want %d", made.Load(), n)
	}
	info, err := f.inspector().GetQueueInfo(Queue)
	if err != nil || info.Pending != n {
		t.Fatalf("queue %+v %v, want %d pending", info, err, n)
	}
	if got := f.due(); got != 0 {
		t.Errorf("%d still due", got)
	}

	// Both workers serve and dispatch; each callback arrives once.
	for _, d := range []*Deliverer{d1, d2} {
		f.serve(d)
		f.dispatch(d)
	}
	waitFor(t, 20*time.Second, "every callback", func() bool { return len(rc.deliveries()) >= n })
	// A due callback seen again after its delivery (a dispatcher that read it just before another
	// enqueued it) makes no second task: the delivered task's id is retained.
	f.rdb.ZAdd(f.ctx, store.DefaultKeys.Callbacks(), redisZ(fmt.Sprintf("%d:race-0", f.user)))
	waitFor(t, 5*time.Second, "the stale due entry to go", func() bool { return f.due() == 0 })
	time.Sleep(300 * time.Millisecond)
	seen := map[string]int{}
	for _, g := range rc.deliveries() {
		seen[g.header.Get(HeaderDelivery)]++
	}
	if len(seen) != n {
		t.Errorf("%d distinct deliveries, want %d", len(seen), n)
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("%s delivered %d times", id, k)
		}
	}
}

// (f) Canceled and failed requests get their callbacks too, with their own bodies.
func TestCanceledAndFailedRequestsGetCallbacks(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, nil)
	f.deliverer([]string{rc.hostPort()})
	canceled := f.cancelReq(f.user, "gone-1", rc.url("/c"))
	failed := f.fail("bad-1", rc.url("/f"))

	waitFor(t, 10*time.Second, "both callbacks", func() bool { return len(rc.deliveries()) == 2 })
	for _, g := range rc.deliveries() {
		switch g.path {
		case "/c":
			f.checkDelivery(g, canceled)
			if string(g.body) != `{"requestId":"gone-1","state":"canceled"}` {
				t.Errorf("canceled body %s", g.body)
			}
		case "/f":
			f.checkDelivery(g, failed)
			if string(g.body) != `{"requestId":"bad-1","state":"failed","error":{"code":422,"data":"invalid_image"}}` {
				t.Errorf("failed body %s", g.body)
			}
		default:
			t.Errorf("delivery to %s", g.path)
		}
	}
}

// A request without a callback URL, and a tombstone, have none.
func TestNoCallbackWithoutURL(t *testing.T) {
	f := newFixture(t)
	f.cancelReq(f.user, "plain-1", "")
	if _, err := f.reg.Cancel(f.ctx, f.user, "never-seen"); err != nil {
		t.Fatal(err)
	}
	if n := f.due(); n != 0 {
		t.Errorf("%d due", n)
	}
}

// The user has no webhook secret: nothing is sent, the task is archived (an operator may run it again
// once a secret exists), and an error is logged.
func TestNoSecretDropsTheDelivery(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, nil)
	d := f.deliverer([]string{rc.hostPort()})
	user := f.newUser(false)
	f.cancelReq(user, "nosecret-1", rc.url("/hook"))

	waitFor(t, 10*time.Second, "the drop", func() bool { return counter(d, resultDropped) == 1 })
	waitFor(t, 2*time.Second, "the archive", func() bool {
		a, _ := f.inspector().ListArchivedTasks(Queue)
		return len(a) == 1
	})
	if n := len(rc.deliveries()); n != 0 {
		t.Errorf("%d deliveries", n)
	}
	if !strings.Contains(f.logs.String(), "the user has no webhook secret") {
		t.Errorf("no error log:\n%s", f.logs.String())
	}
}

// The allowlist is checked again at delivery: a host no longer allowed is not called.
func TestURLNoLongerAllowedIsNotCalled(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, nil)
	d := f.deliverer([]string{"hooks.example.com"})
	f.cancelReq(f.user, "moved-1", rc.url("/hook"))
	waitFor(t, 10*time.Second, "the drop", func() bool { return counter(d, resultDropped) == 1 })
	if n := len(rc.deliveries()); n != 0 {
		t.Errorf("%d deliveries", n)
	}
}

// A redirect is not followed: it is a failed attempt, and its target is never called.
func TestRedirectIsAFailedAttempt(t *testing.T) {
	f := newFixture(t)
	other := newReceiver(t, nil)
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.url("/elsewhere"), http.StatusTemporaryRedirect)
	})
	d := f.deliverer([]string{rc.hostPort(), other.hostPort()}, WithMaxRetry(1))
	f.cancelReq(f.user, "redir-1", rc.url("/hook"))
	waitFor(t, 10*time.Second, "the last attempt", func() bool { return counter(d, resultGaveUp) == 1 })
	if n := len(rc.deliveries()); n != 2 {
		t.Errorf("%d attempts, want 2", n)
	}
	if n := len(other.deliveries()); n != 0 {
		t.Errorf("the redirect was followed (%d)", n)
	}
	if !strings.Contains(f.logs.String(), `"status":307`) {
		t.Errorf("no status in the logs:\n%s", f.logs.String())
	}
}

// A task whose request state expired meanwhile is dropped, not retried.
func TestExpiredRequestIsDropped(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, nil)
	d := f.newDeliverer([]string{rc.hostPort()})
	req := f.cancelReq(f.user, "expired-1", rc.url("/hook"))
	if _, err := d.Dispatch(f.ctx); err != nil {
		t.Fatal(err)
	}
	f.rdb.Del(f.ctx, store.DefaultKeys.Request(req.UserID, req.ID))
	f.serve(d)
	waitFor(t, 10*time.Second, "the drop", func() bool { return counter(d, resultDropped) == 1 })
	time.Sleep(100 * time.Millisecond)
	if n := len(rc.deliveries()); n != 0 {
		t.Errorf("%d deliveries", n)
	}
	if a, _ := f.inspector().ListArchivedTasks(Queue); len(a) != 0 {
		t.Errorf("%d archived", len(a))
	}
}

// The production schedule retries for more than an hour.
func TestRetryScheduleLastsOverAnHour(t *testing.T) {
	var total time.Duration
	for n := range MaxRetry {
		total += RetryDelay(n)
	}
	if total != 4230*time.Second || total <= time.Hour {
		t.Errorf("retries span %s", total)
	}
	for n, want := range map[int]time.Duration{0: 10 * time.Second, 1: 20 * time.Second, 5: 320 * time.Second, 6: 10 * time.Minute, 100: 10 * time.Minute} {
		if got := RetryDelay(n); got != want {
			t.Errorf("RetryDelay(%d) = %s, want %s", n, got, want)
		}
	}
}
