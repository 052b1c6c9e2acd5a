package callback_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"upsize/internal/callback"
	"upsize/internal/cancel"
	"upsize/internal/jobs"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
)

// (c) The worker as cmd/worker wires it (app.NewWorker): while receivers hang in every callback slot,
// an upsize is admitted, run and answered 201; once they answer, every callback is delivered.
func TestWorkerUpsizesWhileEveryCallbackSlotHangs(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	letGo := func() { once.Do(func() { close(release) }) }
	var hanging, delivered atomic.Int32
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hanging.Add(1)
		defer hanging.Add(-1)
		select {
		case <-release:
			delivered.Add(1)
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(rcv.Close)
	host, _ := url.Parse(rcv.URL)

	e := testenv.New(t, testenv.Options{NoWorker: true})
	e.Config.CallbackAllowedHosts = []string{host.Host} // "127.0.0.1:port": listed explicitly
	e.StartWorker()
	t.Cleanup(letGo) // runs before the worker stops
	e.Configure()
	u := e.NewUser("paid", 100)
	ctx := context.Background()
	if _, err := e.Store.SetWebhookSecret(ctx, u.ID); err != nil {
		t.Fatal(err)
	}

	const n = callback.DefaultSlots + 2
	for i := range n {
		rid := fmt.Sprintf("hang-%d", i)
		if _, err := e.Registry.Admit(ctx, cancel.Admission{
			UserID: u.ID, RequestID: rid, ImageID: 1, Scale: "2x", Model: "lanczos3", Cost: 1, Work: time.Millisecond,
			Queue: jobs.QueuePaidSmall, TaskID: jobs.TaskID(u.ID, rid), CallbackURL: rcv.URL + "/hook",
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Registry.Cancel(ctx, u.ID, rid); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for hanging.Load() < callback.DefaultSlots {
		if time.Now().After(deadline) {
			t.Fatalf("%d callbacks hanging, want %d", hanging.Load(), callback.DefaultSlots)
		}
		time.Sleep(10 * time.Millisecond)
	}
	hungAt := time.Now()

	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(64, 64)))
	e.Want(e.Upsize(ctx, u.Key, id, "2x", ""), 201, "")
	took := time.Since(hungAt)
	t.Logf("upload and upsize answered in %s while %d callbacks hang", took, hanging.Load())
	if took < callback.DefaultAttemptTimeout-time.Second && hanging.Load() != callback.DefaultSlots {
		t.Errorf("%d callbacks hanging during the upsize, want %d", hanging.Load(), callback.DefaultSlots)
	}

	letGo()
	deadline = time.Now().Add(15 * time.Second)
	for delivered.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d callbacks delivered", delivered.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
