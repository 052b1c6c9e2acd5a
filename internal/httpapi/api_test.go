package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/gin-gonic/gin"

	"upsize/internal/cancel"
	"upsize/internal/imageops"
	"upsize/internal/store"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
)

func TestUploadAndReadBack(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true})
	u := e.NewUser("paid", 0)
	other := e.NewUser("paid", 0)
	src := testimg.EncodePNG(testimg.Gradient(120, 80))
	r := e.Upload(u.Key, src, map[string]string{"originalPrompt": "fox 🦊", "super": "S", "main": "M", "groupId": "g", "blurReason": "b", "variationId": "7"})
	e.Want(r, 201, "")
	im := r.Image()
	if im["resolution"] != "120x80" || im["scaleSize"] != "1x" || fmt.Sprint(im["ownerId"]) != fmt.Sprint(u.ID) {
		t.Fatalf("image %v", im)
	}
	if info := im["EditInfo"].(map[string]any); info["originalPrompt"] != "fox 🦊" || fmt.Sprint(info["variationId"]) != "7" || info["blurReason"] != "b" {
		t.Fatalf("EditInfo %v", info)
	}
	id := r.ImageID()
	path := fmt.Sprintf("/api/images/%d/file", id)
	f := e.Do(testenv.Req{Method: "GET", Path: path, Key: u.Key})
	e.Want(f, 200, "")
	if !bytes.Equal(f.Body, src) || f.Header.Get("Content-Type") != "image/png" || f.Header.Get("ETag") == "" {
		t.Fatalf("file: %d bytes, type %q, etag %q", len(f.Body), f.Header.Get("Content-Type"), f.Header.Get("ETag"))
	}
	// A client with the bytes already gets 304.
	nm := e.Do(testenv.Req{Method: "GET", Path: path, Key: u.Key, Header: map[string]string{"If-None-Match": f.Header.Get("ETag")}})
	if nm.Status != http.StatusNotModified || len(nm.Body) != 0 {
		t.Fatalf("If-None-Match: %s", nm)
	}
	// Another user's private image is not there for them, whatever the route.
	for _, p := range []string{path, fmt.Sprintf("/api/images/%d", id)} {
		e.Want(e.Do(testenv.Req{Method: "GET", Path: p, Key: other.Key}), 404, fmt.Sprintf("no_input_image (%d)", id))
	}
}

func TestUploadRejectsWhatIsNotASupportedImage(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, MaxInputPixels: 10000})
	u := e.NewUser("paid", 0)
	good := testimg.EncodePNG(testimg.Gradient(20, 20))
	truncated := testimg.EncodeJPEG(testimg.Noise(64, 64, 1))
	truncated = truncated[:len(truncated)/2]
	for _, c := range []struct {
		name   string
		file   []byte
		fields map[string]string
		status int
		reason string
	}{
		{"no file", nil, nil, 400, "missing_file"},
		{"empty file", []byte{}, nil, 415, "unsupported_image_format"},
		{"text", []byte("hello, not an image"), nil, 415, "unsupported_image_format"},
		{"truncated JPEG", truncated, nil, 422, "invalid_image"},
		{"over MAX_INPUT_PIXELS", testimg.EncodePNG(testimg.Gradient(101, 100)), nil, 422, "image_too_large"},
		{"variationId not a number", good, map[string]string{"variationId": "seven"}, 400, "invalid_field (variationId)"},
	} {
		r := e.Upload(u.Key, c.file, c.fields)
		if r.Status != c.status || r.Reason() != c.reason {
			t.Errorf("%s: want %d %q, got %s", c.name, c.status, c.reason, r)
		}
	}
	// A body that is not multipart at all.
	e.Want(e.Do(testenv.Req{Method: "POST", Path: "/api/images", Key: u.Key, Body: good, ContentType: "image/png"}), 400, "missing_file")
}

func TestUpsizeKeepsFormatAlphaAndOrientation(t *testing.T) {
	e := testenv.New(t, testenv.Options{})
	e.Configure()
	u := e.NewUser("paid", 100)
	check := func(name string, src []byte, wantFormat string, w, h int) image.Image {
		t.Helper()
		id := e.UploadOK(u.Key, src)
		r := e.Upsize(context.Background(), u.Key, id, "2x", "")
		e.Want(r, 201, "")
		if got := r.Image()["resolution"]; got != fmt.Sprintf("%dx%d", w, h) {
			t.Fatalf("%s: resolution %v, want %dx%d", name, got, w, h)
		}
		f := e.Do(testenv.Req{Method: "GET", Path: fmt.Sprintf("/api/images/%d/file", r.ImageID()), Key: u.Key})
		e.Want(f, 200, "")
		format, err := imageops.Sniff(f.Body)
		if err != nil || string(format) != wantFormat || f.Header.Get("Content-Type") != "image/"+wantFormat {
			t.Fatalf("%s: result is %v (%v), Content-Type %q; want %s", name, format, err, f.Header.Get("Content-Type"), wantFormat)
		}
		if wantFormat == "webp" {
			return nil
		}
		img, _, err := image.Decode(bytes.NewReader(f.Body))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return img
	}
	check("jpeg", testimg.EncodeJPEG(testimg.Gradient(40, 30)), "jpeg", 80, 60)
	check("webp", testimg.EncodeWebP(testimg.Gradient(40, 30)), "webp", 80, 60)
	img := check("png with alpha", testimg.EncodePNG(testimg.HalfTransparent(40, 30)), "png", 80, 60)
	if _, _, _, a := img.At(5, 30).RGBA(); a != 0 {
		t.Fatalf("transparent half of the PNG came back with alpha %d", a)
	}
	if _, _, _, a := img.At(75, 30).RGBA(); a != 0xffff {
		t.Fatalf("opaque half came back with alpha %d", a)
	}
}

// An upsize that outlasts UPSIZE_WAIT_TIMEOUT answers 202 and is not lost: the request state follows it
// to its image, and sending the same id again attaches to it (no second task, no second charge).
func TestSlowUpsizeAnswers202AndCompletes(t *testing.T) {
	release := make(chan struct{})
	e := testenv.New(t, testenv.Options{WaitTimeout: 100 * time.Millisecond, Upsize: gated(release)})
	e.Configure()
	u := e.NewUser("paid", 2)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(32, 32)))
	r := e.Upsize(context.Background(), u.Key, id, "", "slow-1")
	e.Want(r, 202, "")
	if !bytes.Equal(compactJSON(t, r.Body), []byte(`{"code":202,"data":{"requestId":"slow-1"},"success":true}`)) || r.Header.Get("X-Request-Id") != "slow-1" {
		t.Fatalf("202 body %s, X-Request-Id %q", r.Body, r.Header.Get("X-Request-Id"))
	}
	if st := e.RequestState(u.Key, "slow-1").JSON()["state"]; st != "queued" && st != "running" {
		t.Fatalf("state %v while the worker holds it", st)
	}
	e.Want(e.Upsize(context.Background(), u.Key, id, "2x", "slow-1"), 202, "") // attached, still running
	close(release)
	first := waitState(t, e, u.Key, "slow-1", "completed")
	again := e.Upsize(context.Background(), u.Key, id, "", "slow-1")
	e.Want(again, 201, "")
	if fmt.Sprint(again.ImageID()) != fmt.Sprint(first.Image()["imageId"]) {
		t.Fatalf("attached answer image %d, request state image %v", again.ImageID(), first.Image()["imageId"])
	}
	if c := e.Credits(u.ID); c != 1 {
		t.Fatalf("credits %d after one 2x (cost 1) sent three times, want 1", c)
	}
}

// A client that goes away does not cancel: the work completes, and a retry with the same id gets it.
func TestClientDisconnectDoesNotCancel(t *testing.T) {
	release := make(chan struct{})
	e := testenv.New(t, testenv.Options{Upsize: gated(release)})
	e.Configure()
	u := e.NewUser("paid", 1)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(32, 32)))
	ctx, hangUp := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Upsize(ctx, u.Key, id, "", "gone-1") }()
	waitState(t, e, u.Key, "gone-1", "running")
	hangUp()
	<-done
	time.Sleep(50 * time.Millisecond)
	close(release)
	st := waitState(t, e, u.Key, "gone-1", "completed")
	r := e.Upsize(context.Background(), u.Key, id, "", "gone-1")
	e.Want(r, 201, "")
	if fmt.Sprint(r.ImageID()) != fmt.Sprint(st.Image()["imageId"]) {
		t.Fatalf("retry got image %d, request completed with %v", r.ImageID(), st.Image()["imageId"])
	}
	if c := e.Credits(u.ID); c != 0 {
		t.Fatalf("credits %d, want 0 (charged once)", c)
	}
}

// A failure in the worker answers its envelope, refunds, leaves no image, and stays failed.
func TestWorkerFailureRefunds(t *testing.T) {
	e := testenv.New(t, testenv.Options{Upsize: func(context.Context, []byte, io.Writer, imageops.Params) (imageops.Result, error) {
		return imageops.Result{}, fmt.Errorf("%w: synthetic", imageops.ErrInvalidImage)
	}})
	e.Configure()
	u := e.NewUser("paid", 4)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	e.Want(e.Upsize(context.Background(), u.Key, id, "8x", "bad-1"), 422, "invalid_image")
	if c := e.Credits(u.ID); c != 4 {
		t.Fatalf("credits %d after a failed 8x, want 4 (refunded)", c)
	}
	st := e.RequestState(u.Key, "bad-1")
	e.Want(st, 200, "")
	if m := st.JSON(); m["state"] != "failed" || fmt.Sprint(m["error"]) != "map[code:422 data:invalid_image]" {
		t.Fatalf("request state %s", st.Body)
	}
	e.Want(e.Cancel(u.Key, "bad-1"), 409, "request_already_failed")
	e.Want(e.Upsize(context.Background(), u.Key, id, "8x", "bad-1"), 422, "invalid_image") // attached: the same outcome
	// No image was created: the next id the store hands out follows the reserved one directly.
	req, err := e.Registry.Get(context.Background(), u.ID, "bad-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Store.GetImage(context.Background(), req.ResultID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("failed request left image %d: %v", req.ResultID, err)
	}
	if _, err := e.Blobs.Open(context.Background(), store.BlobKey(req.ResultID)); err == nil {
		t.Fatalf("failed request left the bytes of image %d", req.ResultID)
	}
}

// Rule 13: over QUEUE_MAX_BACKLOG the upsize answers 429 queue_full with Retry-After in whole seconds,
// charges nothing, and leaves no trace of the request id.
func TestQueueFull(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, QueueMaxBacklog: 1, WaitTimeout: 10 * time.Millisecond})
	e.Configure()
	u := e.NewUser("paid", 10)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	e.Want(e.Upsize(context.Background(), u.Key, id, "", "q-1"), 202, "")
	e.Want(e.Upsize(context.Background(), u.Key, id, "", "q-2"), 202, "")
	r := e.Upsize(context.Background(), u.Key, id, "", "q-3")
	e.Want(r, 429, "queue_full")
	if ra := r.Header.Get("Retry-After"); !regexp.MustCompile(`^[0-9]+$`).MatchString(ra) {
		t.Fatalf("Retry-After %q", ra)
	}
	if c := e.Credits(u.ID); c != 8 {
		t.Fatalf("credits %d, want 8 (two admitted, the 429 free)", c)
	}
	e.Want(e.RequestState(u.Key, "q-3"), 404, "no_request (q-3)")
	// The queued ones run once a worker comes.
	e.StartWorker()
	waitState(t, e, u.Key, "q-1", "completed")
	waitState(t, e, u.Key, "q-2", "completed")
}

// Request ids are scoped to their user: another user cannot read, cancel or attach to them.
func TestRequestIDsAreScopedToTheUser(t *testing.T) {
	e := testenv.New(t, testenv.Options{})
	e.Configure()
	a, b := e.NewUser("paid", 1), e.NewUser("paid", 1)
	ai := e.UploadOK(a.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	e.Want(e.Upsize(context.Background(), a.Key, ai, "", "shared-id"), 201, "")
	e.Want(e.RequestState(b.Key, "shared-id"), 404, "no_request (shared-id)")
	e.Want(e.Cancel(b.Key, "shared-id"), 200, "") // a tombstone in B's namespace only
	e.Want(e.RequestState(a.Key, "shared-id"), 200, "")
	if st := e.RequestState(a.Key, "shared-id").JSON()["state"]; st != "completed" {
		t.Fatalf("A's request became %v after B's cancel", st)
	}
	// B cannot attach to A's image through the shared id either (A's image is private to A).
	e.Want(e.Upsize(context.Background(), b.Key, ai, "", "other-id"), 404, fmt.Sprintf("no_input_image (%d)", ai))
	if c := e.Credits(a.ID); c != 0 {
		t.Fatalf("A's credits %d", c)
	}
}

// Concurrent upsizes by one user can never spend more than the user has.
func TestConcurrentUpsizesNeverOverspend(t *testing.T) {
	e := testenv.New(t, testenv.Options{Concurrency: 4})
	e.Configure()
	const credits, attempts = 7, 40
	u := e.NewUser("paid", credits)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(8, 8)))
	var mu sync.Mutex
	statuses := map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < attempts; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := e.Upsize(context.Background(), u.Key, id, "", fmt.Sprintf("c-%d", i))
			mu.Lock()
			statuses[r.Status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if statuses[201] != credits || statuses[402] != attempts-credits || len(statuses) != 2 {
		t.Fatalf("answers %v, want %d×201 and %d×402", statuses, credits, attempts-credits)
	}
	if c := e.Credits(u.ID); c != 0 {
		t.Fatalf("balance %d, want 0", c)
	}
}

// Every response above was validated against openapi.yaml; here the document itself: it loads, it is
// valid, and every route the router serves is in it.
func TestOpenAPIDocumentCoversEveryRoute(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true})
	r := e.Do(testenv.Req{Method: "GET", Path: "/openapi.json"})
	e.Want(r, 200, "")
	doc, err := openapi3.NewLoader().LoadFromData(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
	engine := e.Server.Config.Handler.(*gin.Engine)
	served := map[string]bool{}
	for _, rt := range engine.Routes() {
		path := regexp.MustCompile(`[:*]([A-Za-z]+)`).ReplaceAllString(rt.Path, "{$1}")
		served[rt.Method+" "+path] = true
		if item := doc.Paths.Find(path); item == nil || item.GetOperation(rt.Method) == nil {
			t.Errorf("%s %s is served but not in openapi.yaml", rt.Method, path)
		}
	}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			if !served[method+" "+path] {
				t.Errorf("openapi.yaml documents %s %s, which is not served", method, path)
			}
		}
	}
	if len(served) < 19 {
		t.Errorf("only %d routes served", len(served))
	}
}

// API keys are stored hashed: the plain key is nowhere in Redis.
func TestAPIKeysAreNotStoredInPlainText(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true})
	u := e.NewUser("free", 0)
	ctx := context.Background()
	keys, err := e.RDB.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.Contains(k, u.Key) {
			t.Fatalf("key name %q holds the API key", k)
		}
		if e.RDB.Type(ctx, k).Val() == "hash" {
			for f, v := range e.RDB.HGetAll(ctx, k).Val() {
				if strings.Contains(v, u.Key) || strings.Contains(f, u.Key) {
					t.Fatalf("%s.%s holds the API key", k, f)
				}
			}
		}
	}
}

// gated is an image operation that waits for release (or its context) before upsizing.
func gated(release <-chan struct{}) func(context.Context, []byte, io.Writer, imageops.Params) (imageops.Result, error) {
	return func(ctx context.Context, src []byte, w io.Writer, p imageops.Params) (imageops.Result, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return imageops.Result{}, ctx.Err()
		}
		return imageops.Upsize(ctx, src, w, p)
	}
}

// waitState reads GET /api/requests/{rid} until it reports state (or 10 s pass).
func waitState(t *testing.T, e *testenv.Env, key, rid string, state cancel.State) *testenv.Resp {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := e.RequestState(key, rid)
		if r.Status == 200 && r.JSON()["state"] == string(state) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s: %s, want state %s", rid, r, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func compactJSON(t *testing.T, b []byte) []byte {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(v)
	return out
}
