package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"upsize/internal/cancel"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
	"upsize/internal/tests3"
)

// The object store stopped at upload, killed while results are written, paused (a store that accepts
// connections and answers nothing) and killed while a download streams: every request gets a defined
// answer (503 in the envelope, or failed and refunded, or completed with its bytes), never a completed
// request whose image is missing. The service runs in this process (testenv) on an S3 server of the
// test's own, which the test stops and restarts. docs/faults.md has the figures.
func TestObjectStoreFaults(t *testing.T) {
	srv := tests3.StartServer(t)
	e := testenv.New(t, testenv.Options{BlobURL: tests3.BucketAt(t, srv.Addr), WaitTimeout: 50 * time.Second})
	e.Configure()
	u := e.NewUser("paid", 1000)
	ctx := context.Background()
	small := testimg.EncodePNG(testimg.Gradient(64, 48))
	smallID := e.UploadOK(u.Key, small)
	bigSrc := testimg.EncodePNG(testimg.Noise(1000, 1000, 5)) // 8x: 64 MP of noise, ~190 MB written over seconds
	bigID := e.UploadOK(u.Key, bigSrc)

	// 1. Stopped at upload: 503 service_unavailable, in the envelope, in bounded time.
	srv.Kill()
	t0 := time.Now()
	r := e.Upload(u.Key, small, nil)
	e.Want(r, 503, "service_unavailable")
	t.Logf("upload with the store down: %s in %.1f s", r, time.Since(t0).Seconds())
	if time.Since(t0) > 70*time.Second {
		t.Errorf("the upload took %s to answer", time.Since(t0))
	}
	// 2. Stopped while a task runs: the worker retries with back-off, then fails the request and refunds it.
	before := e.Credits(u.ID)
	t0 = time.Now()
	r = e.Upsize(ctx, u.Key, smallID, "2x", "store-down")
	e.Want(r, 500, "upsize_failed")
	t.Logf("upsize with the store down: %s in %.1f s (retries included)", r, time.Since(t0).Seconds())
	if c := e.Credits(u.ID); c != before {
		t.Fatalf("credits %d after a failed upsize, want %d (refunded)", c, before)
	}

	// 3. Killed in the middle of an 8x result's multipart upload, back 3 s later: the task is retried and
	// completes, or fails and is refunded; a completed one has all its bytes, and no unfinished upload is
	// left.
	srv.Restart()
	before = e.Credits(u.ID)
	done := make(chan *testenv.Resp, 1)
	go func() { done <- e.Upsize(ctx, u.Key, bigID, "8x", "store-dies-mid-write") }()
	waitRunning(t, e, u.ID, "store-dies-mid-write")
	time.Sleep(1500 * time.Millisecond)
	srv.Kill()
	time.Sleep(3 * time.Second)
	srv.Restart()
	r = <-done
	if r.Status == 202 { // still going after UPSIZE_WAIT_TIMEOUT: its end is in GET /api/requests
		r = finalAnswer(t, e, u.Key, "store-dies-mid-write")
	}
	switch {
	case r.Status == 201:
		f := e.Do(testenv.Req{Method: "GET", Path: fmt.Sprintf("/api/images/%d/file", r.ImageID()), Key: u.Key})
		if f.Status != 200 || int64(len(f.Body)) < 1<<20 {
			t.Fatalf("completed, but its file answers %d with %d bytes", f.Status, len(f.Body))
		}
		if c := e.Credits(u.ID); c != before-4 {
			t.Fatalf("credits %d, want %d", c, before-4)
		}
	case r.Status == 500 && r.Reason() == "upsize_failed":
		if c := e.Credits(u.ID); c != before {
			t.Fatalf("failed, but credits %d, want %d", c, before)
		}
	default:
		t.Fatalf("upsize across a store crash: %s", r)
	}
	t.Logf("8x whose store died mid-write and came back: %s", r)
	largeID := bigID // what step 5 downloads: the 8x result when there is one (~190 MB)
	if r.Status == 201 {
		largeID = r.ImageID()
	}
	if _, temps := testenv.BlobObjects(t, e.Config.BlobURL); temps != 0 {
		t.Errorf("%d unfinished multipart uploads left", temps)
	}

	// 4. Paused 2 s (slow): a download waits and then succeeds.
	srv.Pause()
	go func() { time.Sleep(2 * time.Second); srv.Resume() }()
	t0 = time.Now()
	f := e.Do(testenv.Req{Method: "GET", Path: fmt.Sprintf("/api/images/%d/file", smallID), Key: u.Key})
	if f.Status != 200 || string(f.Body) != string(small) {
		t.Fatalf("download from a slow store: %d, %d bytes", f.Status, len(f.Body))
	}
	t.Logf("download from a store paused 2 s: 200 in %.1f s", time.Since(t0).Seconds())

	// 5. Killed while a large download streams: the body ends early (the status was sent), the client
	// sees the cut, and the next download answers 503.
	res, err := httpGet(e, u.Key, fmt.Sprintf("/api/images/%d/file", largeID))
	if err != nil {
		t.Fatal(err)
	}
	var head [4096]byte
	if _, err := io.ReadFull(res.Body, head[:]); err != nil {
		t.Fatalf("first bytes of a download: %v", err)
	}
	srv.Kill()
	n, err := io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if err == nil && int64(len(head))+n == res.ContentLength {
		// The whole small-enough file may have been in flight already: then there was no cut to see.
		t.Logf("the download finished before the store died (%d bytes)", res.ContentLength)
	} else {
		t.Logf("download cut by the store's death after %d of %d bytes: %v", int64(len(head))+n, res.ContentLength, err)
	}
	e.Want(e.Do(testenv.Req{Method: "GET", Path: fmt.Sprintf("/api/images/%d/file", largeID), Key: u.Key}), 503, "service_unavailable")
	srv.Restart() // for the bucket's clean-up
}

// waitRunning waits until the request is running in a worker.
func waitRunning(t testing.TB, e *testenv.Env, userID int64, rid string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if req, err := e.Registry.Get(context.Background(), userID, rid); err == nil && req.State == cancel.Running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never ran", rid)
		}
	}
}

// finalAnswer waits for the request's outcome and returns it as the upsize would have answered it.
func finalAnswer(t testing.TB, e *testenv.Env, key, rid string) *testenv.Resp {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		r := e.RequestState(key, rid)
		switch r.JSON()["state"] {
		case "completed":
			return &testenv.Resp{Status: 201, Body: r.Body} // the body's "image" is the same
		case "failed":
			er, _ := r.JSON()["error"].(map[string]any)
			b, _ := json.Marshal(map[string]any{"success": false, "code": er["code"], "data": er["data"]})
			code, _ := er["code"].(json.Number).Int64()
			return &testenv.Resp{Status: int(code), Body: b}
		case "canceled":
			t.Fatalf("%s was canceled", rid)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no outcome: %s", rid, r)
		}
	}
}

// httpGet sends a GET without the validating client, for a body read by hand.
func httpGet(e *testenv.Env, key, path string) (*http.Response, error) {
	req, err := http.NewRequest("GET", e.Server.URL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Api-Key", key)
	return http.DefaultClient.Do(req)
}
