package cancel_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"upsize/internal/cancel"
	"upsize/internal/store"
	"upsize/internal/testredis"
)

type fixture struct {
	rdb   *redis.Client
	st    *store.Store
	reg   *cancel.Registry
	user  store.User
	ctx   context.Context
	image store.Image
}

func setup(t *testing.T, credits int64) *fixture {
	rdb := testredis.Redis(t)
	f := &fixture{rdb: rdb, st: store.New(rdb, store.DefaultKeys), reg: cancel.NewRegistry(rdb, store.DefaultKeys, cancel.Settings{TTL: time.Hour}), ctx: context.Background()}
	var err error
	f.user, err = f.st.CreateUser(f.ctx, store.UserPatch{Credits: &credits})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) admit(t *testing.T, rid string, cost int64) cancel.AdmitResult {
	t.Helper()
	res, err := f.reg.Admit(f.ctx, cancel.Admission{UserID: f.user.ID, RequestID: rid, ImageID: 1, Scale: "2x", Model: "lanczos3", Cost: cost, Queue: "q", TaskID: "t-" + rid})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (f *fixture) credits(t *testing.T) int64 {
	t.Helper()
	u, err := f.st.GetUser(f.ctx, f.user.ID)
	if err != nil {
		t.Fatal(err)
	}
	return u.Credits
}

func TestAdmitReservesAndRefusesWhatIsTaken(t *testing.T) {
	f := setup(t, 5)
	res := f.admit(t, "r1", 4)
	if !res.Admitted || res.Request.State != cancel.Queued || res.Request.ResultID == 0 {
		t.Fatalf("first admit: %+v", res)
	}
	if c := f.credits(t); c != 1 {
		t.Fatalf("credits %d after reserving 4 of 5", c)
	}
	if res := f.admit(t, "r1", 1); !res.Exists || res.Request.State != cancel.Queued {
		t.Fatalf("same id again: %+v", res)
	}
	if res := f.admit(t, "r2", 2); !res.NoCredit {
		t.Fatalf("over the balance: %+v", res)
	}
	if c := f.credits(t); c != 1 {
		t.Fatalf("credits %d after refused admissions", c)
	}
	// Queued, it never expires: its credits are held until it has an outcome.
	key := store.DefaultKeys.Request(f.user.ID, "r1")
	if ttl := f.rdb.PTTL(f.ctx, key).Val(); ttl != -1 {
		t.Fatalf("a queued request expires in %s; it must not while its credits are held", ttl)
	}
	if _, _, err := f.reg.Start(f.ctx, f.user.ID, "r1"); err != nil {
		t.Fatal(err)
	}
	if ttl := f.rdb.PTTL(f.ctx, key).Val(); ttl != -1 {
		t.Fatalf("a running request expires in %s", ttl)
	}
	if _, err := f.reg.Fail(f.ctx, f.user.ID, "r1", 500, "upsize_failed"); err != nil {
		t.Fatal(err)
	}
	if ttl := f.rdb.PTTL(f.ctx, key).Val(); ttl <= 0 || ttl > time.Hour {
		t.Fatalf("finished request kept for %s, want REQUEST_TTL (1h)", ttl)
	}
}

// Every transition to an outcome starts the keep time and releases the user's open slot.
func TestOutcomesExpireAndReleaseOpenSlots(t *testing.T) {
	f := setup(t, 10)
	res := f.admit(t, "c1", 1)
	f.admit(t, "x1", 1)
	f.admit(t, "f1", 1)
	if n, _ := f.reg.OpenCount(f.ctx, f.user.ID); n != 3 {
		t.Fatalf("open %d, want 3", n)
	}
	img := store.Image{ID: res.Request.ResultID, OwnerID: f.user.ID, Width: 2, Height: 2, Scale: "2x", Format: "png"}
	if st, err := f.reg.Complete(f.ctx, res.Request, img); err != nil || st != cancel.Completed {
		t.Fatalf("complete: %s %v", st, err)
	}
	if _, err := f.reg.Cancel(f.ctx, f.user.ID, "x1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Fail(f.ctx, f.user.ID, "f1", 422, "invalid_image"); err != nil {
		t.Fatal(err)
	}
	for _, rid := range []string{"c1", "x1", "f1"} {
		if ttl := f.rdb.PTTL(f.ctx, store.DefaultKeys.Request(f.user.ID, rid)).Val(); ttl <= 0 || ttl > time.Hour {
			t.Errorf("%s kept for %s after its outcome, want REQUEST_TTL", rid, ttl)
		}
	}
	if n, _ := f.reg.OpenCount(f.ctx, f.user.ID); n != 0 {
		t.Fatalf("open %d after three outcomes", n)
	}
	if c := f.credits(t); c != 9 {
		t.Fatalf("credits %d, want 9 (one completed at cost 1)", c)
	}
}

// Rule 13: a user's queued + running requests are bounded, atomically, and refusing charges nothing.
func TestMaxOpenRequestsPerUser(t *testing.T) {
	f := setup(t, 100)
	f.reg = cancel.NewRegistry(f.rdb, store.DefaultKeys, cancel.Settings{TTL: time.Hour, MaxOpen: 3})
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted, tooMany := 0, 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := f.admit(t, fmt.Sprintf("open-%d", i), 2)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case res.Admitted:
				admitted++
			case res.TooMany:
				tooMany++
			}
		}()
	}
	wg.Wait()
	if admitted != 3 || tooMany != 17 {
		t.Fatalf("admitted %d, too many %d; want 3 and 17", admitted, tooMany)
	}
	if c := f.credits(t); c != 100-3*2 {
		t.Fatalf("credits %d, want %d: refused requests must not be charged", c, 100-3*2)
	}
	// Another user is not held up by this one.
	other, _ := f.st.CreateUser(f.ctx, store.UserPatch{Credits: ptr(int64(5))})
	if res, err := f.reg.Admit(f.ctx, cancel.Admission{UserID: other.ID, RequestID: "open-0", Cost: 1, Scale: "2x"}); err != nil || !res.Admitted {
		t.Fatalf("other user: %+v %v", res, err)
	}
}

func ptr[T any](v T) *T { return &v }

// A task whose request's state is gone (Redis lost it) refunds the reservation and records a failure.
func TestLostRequestIsRefundedAndFailed(t *testing.T) {
	f := setup(t, 10)
	f.admit(t, "lost", 4)
	if err := f.rdb.Del(f.ctx, store.DefaultKeys.Request(f.user.ID, "lost")).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.reg.Start(f.ctx, f.user.ID, "lost"); !errors.Is(err, cancel.ErrNotFound) {
		t.Fatalf("start: %v", err)
	}
	n, exists, err := f.reg.Lost(f.ctx, f.user.ID, "lost", 500, "upsize_failed")
	if err != nil || exists || n != 4 {
		t.Fatalf("lost: refunded %d, exists %v, %v", n, exists, err)
	}
	if c := f.credits(t); c != 10 {
		t.Fatalf("credits %d, want 10", c)
	}
	req, err := f.reg.Get(f.ctx, f.user.ID, "lost")
	if err != nil || req.State != cancel.Failed || req.ErrCode != 500 {
		t.Fatalf("after settling: %+v %v", req, err)
	}
	// Settling twice refunds nothing more.
	if _, exists, _ := f.reg.Lost(f.ctx, f.user.ID, "lost", 500, "upsize_failed"); !exists {
		t.Fatal("second settlement did not see the recorded failure")
	}
	if c := f.credits(t); c != 10 {
		t.Fatalf("credits %d after a second settlement", c)
	}
}

// Cancels of made-up ids cannot grow Redis without limit: past the bound the oldest tombstones go,
// and canceled real requests are not touched.
func TestTombstonesAreBoundedPerUser(t *testing.T) {
	f := setup(t, 10)
	f.reg = cancel.NewRegistry(f.rdb, store.DefaultKeys, cancel.Settings{TTL: time.Hour, MaxTombstones: 5})
	f.admit(t, "real", 1)
	if _, err := f.reg.Cancel(f.ctx, f.user.ID, "real"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if _, err := f.reg.Cancel(f.ctx, f.user.ID, fmt.Sprintf("ghost-%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := f.rdb.Keys(f.ctx, store.DefaultKeys.Request(f.user.ID, "ghost-*")).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 5 {
		t.Fatalf("%d tombstones kept, want 5", len(keys))
	}
	for i := 45; i < 50; i++ {
		if req, err := f.reg.Get(f.ctx, f.user.ID, fmt.Sprintf("ghost-%02d", i)); err != nil || !req.Tombstone {
			t.Fatalf("newest tombstone ghost-%02d: %+v %v", i, req, err)
		}
	}
	if req, err := f.reg.Get(f.ctx, f.user.ID, "real"); err != nil || req.State != cancel.Canceled {
		t.Fatalf("the canceled real request: %+v %v", req, err)
	}
	// Another user's tombstones are counted apart.
	if _, err := f.reg.Cancel(f.ctx, f.user.ID+1, "ghost-00"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Get(f.ctx, f.user.ID+1, "ghost-00"); err != nil {
		t.Fatalf("other user's tombstone: %v", err)
	}
}

func TestCancelBeforeArrivalLeavesATombstone(t *testing.T) {
	f := setup(t, 5)
	for i := 0; i < 2; i++ {
		res, err := f.reg.Cancel(f.ctx, f.user.ID, "early")
		if err != nil || res.State != cancel.Canceled {
			t.Fatalf("cancel %d: %+v %v", i, res, err)
		}
	}
	if res := f.admit(t, "early", 1); !res.Exists || !res.Request.Tombstone || res.Request.State != cancel.Canceled {
		t.Fatalf("admit after the cancel: %+v", res)
	}
	if c := f.credits(t); c != 5 {
		t.Fatalf("credits %d", c)
	}
	if ttl := f.rdb.PTTL(f.ctx, store.DefaultKeys.Request(f.user.ID, "early")).Val(); ttl <= 0 {
		t.Fatalf("tombstone has no expiry (%s): it would stay forever", ttl)
	}
}

func TestFailRefundsExactlyOnce(t *testing.T) {
	f := setup(t, 5)
	f.admit(t, "f1", 3)
	for i := 0; i < 2; i++ {
		st, err := f.reg.Fail(f.ctx, f.user.ID, "f1", 422, "invalid_image")
		if err != nil || st != cancel.Failed {
			t.Fatalf("fail %d: %s %v", i, st, err)
		}
	}
	if res, _ := f.reg.Cancel(f.ctx, f.user.ID, "f1"); res.State != cancel.Failed {
		t.Fatalf("cancel after failure: %+v", res)
	}
	if c := f.credits(t); c != 5 {
		t.Fatalf("credits %d, want 5 (one refund)", c)
	}
	req, _ := f.reg.Get(f.ctx, f.user.ID, "f1")
	if req.ErrCode != 422 || req.ErrData != "invalid_image" {
		t.Fatalf("request %+v", req)
	}
}

func TestStartRefusesCanceledAndFinished(t *testing.T) {
	f := setup(t, 5)
	f.admit(t, "s1", 1)
	if _, err := f.reg.Cancel(f.ctx, f.user.ID, "s1"); err != nil {
		t.Fatal(err)
	}
	if req, run, err := f.reg.Start(f.ctx, f.user.ID, "s1"); err != nil || run || req.State != cancel.Canceled {
		t.Fatalf("start of a canceled request: %+v %v %v", req, run, err)
	}
	if _, _, err := f.reg.Start(f.ctx, f.user.ID, "never"); !errors.Is(err, cancel.ErrNotFound) {
		t.Fatalf("start of an unknown request: %v", err)
	}
	f.admit(t, "s2", 1)
	if _, run, _ := f.reg.Start(f.ctx, f.user.ID, "s2"); !run {
		t.Fatal("queued request does not start")
	}
	// A second start (a worker crashed and asynq handed the task to another) runs again.
	if req, run, _ := f.reg.Start(f.ctx, f.user.ID, "s2"); !run || req.Attempts != 2 {
		t.Fatalf("restart: %+v %v", req, run)
	}
}

// Completion and cancel race through the registry: whatever the interleaving, each request ends in
// exactly one state, both sides agree on it, the image exists exactly when it completed, and the
// balance equals the initial one minus the cost of the completed ones.
func TestCompleteAndCancelRaceToOneOutcome(t *testing.T) {
	const n, cost = 200, 2
	f := setup(t, n*cost)
	type result struct {
		complete cancel.State
		cancel   cancel.CancelResult
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		rid := fmt.Sprintf("race-%d", i)
		res := f.admit(t, rid, cost)
		if _, run, err := f.reg.Start(f.ctx, f.user.ID, rid); !run || err != nil {
			t.Fatalf("start %s: %v", rid, err)
		}
		img := store.Image{ID: res.Request.ResultID, OwnerID: f.user.ID, Width: 2, Height: 2, Scale: "2x", Format: "png"}
		wg.Add(2)
		go func() {
			defer wg.Done()
			st, err := f.reg.Complete(f.ctx, res.Request, img)
			if err != nil {
				t.Error(err)
			}
			results[i].complete = st
		}()
		go func() {
			defer wg.Done()
			cr, err := f.reg.Cancel(f.ctx, f.user.ID, rid)
			if err != nil {
				t.Error(err)
			}
			results[i].cancel = cr
		}()
	}
	wg.Wait()
	completed := 0
	for i, r := range results {
		rid := fmt.Sprintf("race-%d", i)
		final, err := f.reg.Get(f.ctx, f.user.ID, rid)
		if err != nil {
			t.Fatal(err)
		}
		_, imgErr := f.st.GetImage(f.ctx, final.ResultID)
		switch final.State {
		case cancel.Completed:
			completed++
			if r.complete != cancel.Completed || r.cancel.State != cancel.Completed || imgErr != nil {
				t.Errorf("%s completed, but complete said %s, cancel said %s, image err %v", rid, r.complete, r.cancel.State, imgErr)
			}
		case cancel.Canceled:
			if r.complete != cancel.Canceled || r.cancel.State != cancel.Canceled || !errors.Is(imgErr, store.ErrNotFound) {
				t.Errorf("%s canceled, but complete said %s, cancel said %s, image err %v", rid, r.complete, r.cancel.State, imgErr)
			}
		default:
			t.Errorf("%s ended %s", rid, final.State)
		}
	}
	if c := f.credits(t); c != int64(n-completed)*cost {
		t.Fatalf("balance %d, want %d (%d of %d completed at cost %d)", c, int64(n-completed)*cost, completed, n, cost)
	}
	t.Logf("%d of %d completed, %d canceled", completed, n, n-completed)
}

func TestHubWakesWaitersAndRewakesAfterReconnect(t *testing.T) {
	f := setup(t, 10)
	hub := cancel.NewHub(f.rdb, f.reg)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go hub.Run(ctx)
	<-hub.Ready()

	f.admit(t, "w1", 1)
	wake, done := hub.Watch(f.user.ID, "w1")
	defer done()
	other, doneOther := hub.Watch(f.user.ID+1, "w1") // same id, other user: must not wake
	defer doneOther()
	if _, err := f.reg.Fail(f.ctx, f.user.ID, "w1", 500, "x"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-wake:
	case <-time.After(2 * time.Second):
		t.Fatal("waiter not woken by the outcome")
	}
	select {
	case <-other:
		t.Fatal("another user's waiter was woken")
	case <-time.After(50 * time.Millisecond):
	}

	// Drop the subscription's connection: what is published meanwhile is lost, so after resubscribing
	// the hub wakes everyone to re-read their state.
	_, doneW2 := hub.Watch(f.user.ID, "w2")
	defer doneW2()
	wake2, _ := hub.Watch(f.user.ID, "w2")
	killSubscriptions(t, f.rdb)
	select {
	case <-wake2:
	case <-time.After(10 * time.Second):
		t.Fatal("waiters not woken after the subscription reconnected")
	}
}

func TestInflightCancelStopsOnlyThatRequest(t *testing.T) {
	f := setup(t, 10)
	in := cancel.NewInflight(f.rdb, f.reg)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go in.Run(ctx)
	<-in.Ready()
	f.admit(t, "run-1", 1)
	f.reg.Start(f.ctx, f.user.ID, "run-1")
	work, done := in.Track(context.Background(), f.user.ID, "run-1")
	defer done()
	bystander, done2 := in.Track(context.Background(), f.user.ID+1, "run-1")
	defer done2()
	if _, err := f.reg.Cancel(f.ctx, f.user.ID, "run-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-work.Done():
		if !errors.Is(context.Cause(work), cancel.ErrCanceled) {
			t.Fatalf("cause %v", context.Cause(work))
		}
	case <-time.After(2 * time.Second):
		t.Fatal("running request not canceled")
	}
	if bystander.Err() != nil {
		t.Fatal("another user's request with the same id was canceled")
	}
}

// killSubscriptions drops the pub/sub connections of this test's database only (a service beside the
// tests keeps its own).
func killSubscriptions(t *testing.T, rdb *redis.Client) {
	t.Helper()
	list, err := rdb.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	db := fmt.Sprintf(" db=%d ", rdb.Options().DB)
	killed := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, db) && strings.Contains(line, " sub=1 ") {
			id := strings.TrimPrefix(strings.Fields(line)[0], "id=")
			if err := rdb.Do(context.Background(), "CLIENT", "KILL", "ID", id).Err(); err != nil {
				t.Fatal(err)
			}
			killed++
		}
	}
	if killed == 0 {
		t.Fatalf("no subscription of DB %d to kill in:\n%s", rdb.Options().DB, list)
	}
}

// A user's first Lane large requests go to the first queue, the rest to the more one; the work of every
// open request is in its queue's backlog until it ends, and completed work is counted.
func TestLanesAndWork(t *testing.T) {
	f := setup(t, 100)
	other, _ := f.st.CreateUser(f.ctx, store.UserPatch{Credits: ptr(int64(100))})
	admit := func(uid int64, rid string, work time.Duration) cancel.Request {
		t.Helper()
		res, err := f.reg.Admit(f.ctx, cancel.Admission{UserID: uid, RequestID: rid, ImageID: 1, Scale: "8x",
			Model: "lanczos3", Cost: 1, Work: work, Queue: "first", QueueMore: "more", Lane: 2, TaskID: rid})
		if err != nil || !res.Admitted {
			t.Fatalf("admit %s: %+v %v", rid, res, err)
		}
		return res.Request
	}
	var queues []string
	for i := 0; i < 4; i++ {
		queues = append(queues, admit(f.user.ID, fmt.Sprintf("l%d", i), 3*time.Second).Queue)
	}
	if fmt.Sprint(queues) != "[first first more more]" {
		t.Fatalf("lanes %v", queues)
	}
	if q := admit(other.ID, "o0", 5*time.Second).Queue; q != "first" {
		t.Fatalf("another user's first request went to %s", q)
	}
	work := func() map[string]string { return f.rdb.HGetAll(f.ctx, store.DefaultKeys.Work()).Val() }
	if w := work(); w["first"] != "11000" || w["more"] != "6000" {
		t.Fatalf("backlog work %v, want first 11000, more 6000 (ms)", w)
	}
	// Each outcome takes its request's work out of its queue: complete (counted as done), cancel, fail,
	// and a lost request (from what open kept).
	l0, _ := f.reg.Get(f.ctx, f.user.ID, "l0")
	if _, _, err := f.reg.Start(f.ctx, f.user.ID, "l0"); err != nil {
		t.Fatal(err)
	}
	if st, err := f.reg.Complete(f.ctx, l0, store.Image{ID: l0.ResultID, OwnerID: f.user.ID, Scale: "8x", Format: "png"}); err != nil || st != cancel.Completed {
		t.Fatalf("complete: %s %v", st, err)
	}
	f.reg.Cancel(f.ctx, f.user.ID, "l1")
	f.reg.Fail(f.ctx, f.user.ID, "l2", 500, "upsize_failed")
	f.rdb.Del(f.ctx, store.DefaultKeys.Request(f.user.ID, "l3"))
	if _, _, err := f.reg.Lost(f.ctx, f.user.ID, "l3", 500, "upsize_failed"); err != nil {
		t.Fatal(err)
	}
	if w := work(); w["first"] != "5000" || w["more"] != "0" {
		t.Fatalf("backlog work after four outcomes %v, want first 5000 (o0), more 0", w)
	}
	if done := f.rdb.Get(f.ctx, store.DefaultKeys.WorkDone()).Val(); done != "3000" {
		t.Fatalf("work done %s, want 3000", done)
	}
	// Lanes free up as requests end.
	if q := admit(f.user.ID, "l4", time.Second).Queue; q != "first" {
		t.Fatalf("after its requests ended, the user's next went to %s", q)
	}
}
