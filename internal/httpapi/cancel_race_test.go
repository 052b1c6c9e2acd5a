package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"upsize/internal/cancel"
	"upsize/internal/imageops"
	"upsize/internal/store"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
)

// when a cancel is fired, relative to its upsize
type when int

const (
	never when = iota
	beforeArrival
	inFlight // at a random moment after the upsize was sent: queued or running, or just done
	afterCompletion
)

type trial struct {
	user   testenv.User
	image  int64
	rid    string
	when   when
	delay  time.Duration
	upsize *testenv.Resp
	cancel *testenv.Resp
}

// Many upsizes by several users, on two workers, with cancels fired before arrival, while queued, while
// running and after completion. Afterwards every request has exactly one outcome, the upsize and the
// cancel agree on it, the registry and GET /api/requests say the same, credits spent equal cost times
// completed, and nothing of a canceled request is left in Redis or the blob store.
func TestCancelAtRandomMomentsKeepsOneOutcome(t *testing.T) {
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var rngMu sync.Mutex
	jitter := func(max time.Duration) time.Duration {
		rngMu.Lock()
		defer rngMu.Unlock()
		return time.Duration(rng.Int63n(int64(max)))
	}
	slowish := func(ctx context.Context, src []byte, w io.Writer, p imageops.Params) (imageops.Result, error) {
		select { // widen the window in which a cancel meets a running task
		case <-time.After(jitter(40 * time.Millisecond)):
		case <-ctx.Done():
			return imageops.Result{}, ctx.Err()
		}
		return imageops.Upsize(ctx, src, w, p)
	}
	e := testenv.New(t, testenv.Options{Concurrency: 3, Upsize: slowish})
	e.StartWorker() // a second worker: cancels must reach whichever runs the task
	e.Configure()

	const users, perUser, credits = 4, 40, 1000
	var trials []*trial
	uploads := map[int64]bool{}
	for u := 0; u < users; u++ {
		usr := e.NewUser("paid", credits)
		img := e.UploadOK(usr.Key, testimg.EncodePNG(testimg.Noise(48, 32, int64(u))))
		uploads[img] = true
		for i := 0; i < perUser; i++ {
			trials = append(trials, &trial{
				user: usr, image: img, rid: fmt.Sprintf("race-%d-%d", u, i),
				when: when(rng.Intn(4)), delay: time.Duration(rng.Int63n(int64(60 * time.Millisecond))),
			})
		}
	}

	var wg sync.WaitGroup
	for _, tr := range trials {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if tr.when == beforeArrival {
				tr.cancel = e.Cancel(tr.user.Key, tr.rid)
			}
			var cwg sync.WaitGroup
			if tr.when == inFlight {
				cwg.Add(1)
				go func() {
					defer cwg.Done()
					time.Sleep(tr.delay)
					tr.cancel = e.Cancel(tr.user.Key, tr.rid)
				}()
			}
			tr.upsize = e.Upsize(context.Background(), tr.user.Key, tr.image, "2x", tr.rid)
			cwg.Wait()
			if tr.when == afterCompletion {
				tr.cancel = e.Cancel(tr.user.Key, tr.rid)
			}
		}()
	}
	wg.Wait()

	ctx := context.Background()
	spent := map[int64]int64{}
	results := map[int64]bool{} // result image ids of completed requests
	count := map[string]int{}
	for _, tr := range trials {
		req, err := e.Registry.Get(ctx, tr.user.ID, tr.rid)
		if err != nil {
			t.Fatalf("%s: %v", tr.rid, err)
		}
		st := e.RequestState(tr.user.Key, tr.rid).JSON()["state"]
		switch {
		case tr.upsize.Status == 201:
			count["completed"]++
			spent[tr.user.ID]++
			results[tr.upsize.ImageID()] = true
			if req.State != cancel.Completed || st != "completed" || req.ResultID != tr.upsize.ImageID() {
				t.Errorf("%s answered 201 with image %d; registry %s (result %d), GET says %v", tr.rid, tr.upsize.ImageID(), req.State, req.ResultID, st)
			}
			if tr.cancel != nil && (tr.cancel.Status != 409 || tr.cancel.Reason() != "request_already_completed") {
				t.Errorf("%s completed, but its cancel answered %s", tr.rid, tr.cancel)
			}
		case tr.upsize.Status == 409 && tr.upsize.Reason() == "user_canceled_request":
			count["canceled"]++
			if req.State != cancel.Canceled || st != "canceled" {
				t.Errorf("%s answered 409; registry %s, GET says %v", tr.rid, req.State, st)
			}
			if tr.cancel == nil || tr.cancel.Status != 200 {
				t.Errorf("%s answered 409 canceled, but its cancel answered %v", tr.rid, tr.cancel)
			}
			if req.ResultID != 0 {
				if _, err := e.Store.GetImage(ctx, req.ResultID); err == nil {
					t.Errorf("%s canceled, yet image %d exists", tr.rid, req.ResultID)
				}
			}
		default:
			t.Errorf("%s (cancel %d): upsize answered %s", tr.rid, tr.when, tr.upsize)
		}
		// Sending the id again gives the same outcome.
		again := e.Upsize(ctx, tr.user.Key, tr.image, "2x", tr.rid)
		if again.Status != tr.upsize.Status || (again.Status == 201 && again.ImageID() != tr.upsize.ImageID()) {
			t.Errorf("%s resent: %s, first %s", tr.rid, again, tr.upsize)
		}
	}
	for i := 0; i < len(trials); i += perUser {
		tr := trials[i]
		if got, want := e.Credits(tr.user.ID), credits-spent[tr.user.ID]; got != want {
			t.Errorf("user %d: credits %d, want %d (cost 1 × %d completed)", tr.user.ID, got, want, spent[tr.user.ID])
		}
	}

	// Exactly the uploads and the completed results exist, as metadata and as bytes.
	want := map[int64]bool{}
	for id := range uploads {
		want[id] = true
	}
	for id := range results {
		want[id] = true
	}
	keys, _ := e.RDB.Keys(ctx, store.DefaultKeys.Image(0)[:len(store.DefaultKeys.Image(0))-1]+"*").Result()
	if len(keys) != len(want) {
		t.Errorf("%d image records in Redis, want %d (uploads + completed)", len(keys), len(want))
	}
	for _, k := range keys {
		id, _ := strconv.ParseInt(k[strings.LastIndex(k, ":")+1:], 10, 64)
		if !want[id] {
			t.Errorf("image record %s belongs to no upload and no completed request", k)
		}
	}
	objects, temps := testenv.BlobObjects(t, e.Config.BlobURL)
	if temps != 0 {
		t.Errorf("%d unfinished writes left", temps)
	}
	for key := range objects {
		id, _ := strconv.ParseInt(strings.TrimPrefix(key, "img-"), 10, 64)
		if !want[id] {
			t.Errorf("orphan blob %s", key)
		}
	}
	if len(objects) != len(want) {
		t.Errorf("%d blobs, want %d", len(objects), len(want))
	}
	t.Logf("outcomes %v over %d requests", count, len(trials))
	if count["completed"] == 0 || count["canceled"] == 0 {
		t.Errorf("the mix did not exercise both outcomes: %v", count)
	}
}
