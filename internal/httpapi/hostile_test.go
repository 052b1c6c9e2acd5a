package httpapi_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"upsize/internal/httpapi"
	"upsize/internal/store"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
)

// Each test here is an attack from the security review (docs/security.md), and what the service must do.

// 1. A client controls the method, path and headers of its requests: none of it may add metric series.
func TestMetricLabelsStayBoundedWhateverClientsSend(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true})
	u := e.NewUser("paid", 0)
	rng := rand.New(rand.NewSource(1))
	junk := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[rng.Intn(26)]
		}
		return string(b)
	}
	attack := func(n int) {
		for i := 0; i < n; i++ {
			req, _ := http.NewRequest(junk(8), e.Server.URL+"/"+junk(12)+"/"+strconv.Itoa(i), nil)
			req.Header.Set("X-Platform", junk(6))
			req.Header.Set("X-Api-Key", u.Key)
			if res, err := http.DefaultClient.Do(req); err == nil {
				res.Body.Close()
			}
			// Known routes with made-up methods, platforms and ids.
			req, _ = http.NewRequest(junk(5), fmt.Sprintf("%s/api/images/%s/upsize", e.Server.URL, junk(10)), nil)
			req.Header.Set("X-Api-Key", u.Key)
			if res, err := http.DefaultClient.Do(req); err == nil {
				res.Body.Close()
			}
		}
	}
	series := func() (int, map[string]map[string]bool) {
		values := map[string]map[string]bool{}
		n := 0
		for _, mf := range e.Exposed() {
			for _, m := range mf.GetMetric() {
				n++
				for _, l := range m.GetLabel() {
					if values[l.GetName()] == nil {
						values[l.GetName()] = map[string]bool{}
					}
					values[l.GetName()][l.GetValue()] = true
				}
			}
		}
		return n, values
	}
	attack(50)
	before, _ := series()
	attack(500)
	after, values := series()
	if after != before {
		t.Fatalf("series grew from %d to %d with made-up requests: a client can grow /metrics", before, after)
	}
	for m := range values["method"] {
		if !map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true, "other": true}[m] {
			t.Errorf("method label %q", m)
		}
	}
	for p := range values["platform"] {
		if !map[string]bool{"web": true, "app": true, "figma": true, "api": true, "invalid": true}[p] {
			t.Errorf("platform label %q", p)
		}
	}
	for r := range values["route"] {
		// Route templates are lower case; the junk sent is upper case.
		if r != "unmatched" && (!strings.HasPrefix(r, "/") || strings.ToLower(r) != r) {
			t.Errorf("route label %q", r)
		}
	}
}

// rawRequest writes a request's head and returns the connection, for clients that misbehave.
func rawRequest(t *testing.T, serverURL, head string) net.Conn {
	t.Helper()
	u, _ := url.Parse(serverURL)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	return c
}

// trickle sends one byte every interval until the connection fails or stop is closed.
func trickle(c net.Conn, interval time.Duration, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(interval):
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
		}
	}
}

// readAnswer reads the status line and reports whether the server then closes the connection.
func readAnswer(t *testing.T, c net.Conn, within time.Duration) (status int, closed bool) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer within %s: %v", within, err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	_, err = br.ReadByte()
	return res.StatusCode, err == io.EOF
}

// 4. Slow bodies: an unauthenticated client is answered without its body being read, and its connection
// closed at once; an authenticated one that trickles is cut off at BODY_TIMEOUT.
func TestTrickledBodiesAreCutOff(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, BodyTimeout: 1500 * time.Millisecond})
	u := e.NewUser("paid", 0)
	stop := make(chan struct{})
	defer close(stop)

	c := rawRequest(t, e.Server.URL, "POST /api/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n")
	go trickle(c, 100*time.Millisecond, stop)
	start := time.Now()
	status, closed := readAnswer(t, c, 5*time.Second)
	if status != 403 || !closed || time.Since(start) > time.Second {
		t.Fatalf("unauthenticated trickle: HTTP %d, closed %v after %s; want 403 and the connection closed at once", status, closed, time.Since(start))
	}

	for _, path := range []string{"/api/images", "/api/images/1/upsize", "/admin/users"} {
		auth := "X-Api-Key: " + u.Key
		if strings.HasPrefix(path, "/admin") {
			auth = "Authorization: Bearer " + e.AdminToken
		}
		c := rawRequest(t, e.Server.URL, fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\n%s\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n", path, auth))
		go trickle(c, 200*time.Millisecond, stop)
		start := time.Now()
		status, closed := readAnswer(t, c, 10*time.Second)
		took := time.Since(start)
		if status != 408 || !closed || took < 1400*time.Millisecond || took > 3*time.Second {
			t.Errorf("%s trickled: HTTP %d, closed %v after %s; want 408 and closed at BODY_TIMEOUT (1.5s)", path, status, closed, took)
		}
	}
}

// A body that arrives in time lifts its deadline: an upsize may then wait far longer than BODY_TIMEOUT
// for its outcome without the server giving up on the connection.
func TestBodyDeadlineDoesNotCutLongWaits(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, BodyTimeout: time.Second, WaitTimeout: 2500 * time.Millisecond})
	e.Configure()
	u := e.NewUser("paid", 10)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	r := e.Upsize(context.Background(), u.Key, id, "2x", "long-wait")
	e.Want(r, 202, "") // answered at the wait timeout, 2.5 s: the 1 s body deadline did not end it
}

// 3. Uploads are admitted against UPLOAD_MEMORY at their declared size: past it a client is told to come
// back (503 server_busy, Retry-After) instead of the API holding every body at once.
func TestUploadMemoryIsBounded(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, UploadMemory: 1 << 20, GateWait: 300 * time.Millisecond, BodyTimeout: 20 * time.Second})
	u := e.NewUser("paid", 0)
	stop := make(chan struct{})
	defer close(stop)
	// Two uploads of 600 KB each cannot be held at once within 1 MiB: the first holds its share while
	// it trickles, the second waits 300 ms and is sent away.
	first := rawRequest(t, e.Server.URL, "POST /api/images HTTP/1.1\r\nHost: x\r\nX-Api-Key: "+u.Key+"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 600000\r\n\r\n--b\r\n")
	go trickle(first, 50*time.Millisecond, stop)
	time.Sleep(200 * time.Millisecond)
	ct, body := testenv.Multipart(make([]byte, 600_000), nil)
	r := e.Do(testenv.Req{Method: "POST", Path: "/api/images", Key: u.Key, Body: body, ContentType: ct})
	e.Want(r, 503, "server_busy")
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("503 server_busy without Retry-After")
	}
	// A small upload fits beside the trickling one.
	e.Want(e.Upload(u.Key, testimg.EncodePNG(testimg.Gradient(8, 8)), nil), 201, "")
}

// A large file under a wrong field name is not a file: 400 missing_file, and the unknown part is skipped
// unread. A text field given twice is refused: which one would count?
func TestUploadPartsAreJudgedByName(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true})
	u := e.NewUser("paid", 0)
	var b strings.Builder
	b.WriteString("--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n")
	b.WriteString(strings.Repeat("z", 200_000))
	b.WriteString("\r\n--b--\r\n")
	r := e.Do(testenv.Req{Method: "POST", Path: "/api/images", Key: u.Key, Body: []byte(b.String()), ContentType: "multipart/form-data; boundary=b"})
	e.Want(r, 400, "missing_file")

	b.Reset()
	b.WriteString("--b\r\nContent-Disposition: form-data; name=\"super\"\r\n\r\none\r\n")
	b.WriteString("--b\r\nContent-Disposition: form-data; name=\"super\"\r\n\r\ntwo\r\n--b--\r\n")
	r = e.Do(testenv.Req{Method: "POST", Path: "/api/images", Key: u.Key, Body: []byte(b.String()), ContentType: "multipart/form-data; boundary=b"})
	e.Want(r, 400, "invalid_field (super)")

	b.Reset()
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&b, "--b\r\nContent-Disposition: form-data; name=\"x%d\"\r\n\r\nv\r\n", i)
	}
	b.WriteString("--b--\r\n")
	r = e.Do(testenv.Req{Method: "POST", Path: "/api/images", Key: u.Key, Body: []byte(b.String()), ContentType: "multipart/form-data; boundary=b"})
	e.Want(r, 400, "invalid_body")
}

// 10. HEAD and Range work on files, every answer says nosniff, and errors echo at most 128 bytes of
// what the client sent.
func TestFilesAnswerHeadAndRangeAndNothingIsSniffed(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true})
	u := e.NewUser("paid", 0)
	src := testimg.EncodePNG(testimg.Gradient(40, 30))
	id := e.UploadOK(u.Key, src)
	path := fmt.Sprintf("/api/images/%d/file", id)
	h := e.Do(testenv.Req{Method: "HEAD", Path: path, Key: u.Key})
	if h.Status != 200 || len(h.Body) != 0 || h.Header.Get("Content-Length") != strconv.Itoa(len(src)) ||
		h.Header.Get("ETag") == "" || h.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("HEAD: %s %v", h, h.Header)
	}
	rg := e.Do(testenv.Req{Method: "GET", Path: path, Key: u.Key, Header: map[string]string{"Range": "bytes=0-7"}})
	if rg.Status != 206 || string(rg.Body) != string(src[:8]) {
		t.Fatalf("Range: %s", rg)
	}
	for _, r := range []*testenv.Resp{h, rg, e.Do(testenv.Req{Method: "GET", Path: "/api/images/999999", Key: u.Key})} {
		if r.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Fatalf("HTTP %d without X-Content-Type-Options: nosniff", r.Status)
		}
	}
	long := strings.Repeat("a", 100_000)
	for _, p := range []string{"/api/images/" + long, "/api/requests/" + long} {
		r := e.Do(testenv.Req{Method: "GET", Path: p, Key: u.Key})
		if r.Status != 404 || len(r.Reason()) > 160 {
			t.Fatalf("GET %.40s…: HTTP %d, reason of %d bytes", p, r.Status, len(r.Reason()))
		}
	}
}

// 10. A JSON body that says the same key twice is refused, not read as its last value.
func TestDuplicateJSONKeysAreRefused(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true})
	e.Configure()
	u := e.NewUser("paid", 10)
	path := fmt.Sprintf("/admin/users/%d", u.ID)
	r := e.Do(testenv.Req{Method: "PATCH", Path: path, Admin: true, Body: []byte(`{"credits": 1, "credits": 500}`), ContentType: "application/json"})
	e.Want(r, 400, "invalid_field (credits)")
	if c := e.Credits(u.ID); c != 10 {
		t.Fatalf("credits %d after a refused patch", c)
	}
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	r = e.Do(testenv.Req{Method: "POST", Path: fmt.Sprintf("/api/images/%d/upsize", id), Key: u.Key,
		Body: []byte(`{"scaleSize": "2x", "scaleSize": "8x"}`), ContentType: "application/json"})
	e.Want(r, 400, "invalid_scale_size")
}

// 8. Credits are whole numbers from 0 to 10^12 and unknown admin fields are refused, so a refund can
// never overflow; settings can be read back.
func TestAdminFieldsAreBounded(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true})
	u := e.NewUser("paid", 0)
	path := fmt.Sprintf("/admin/users/%d", u.ID)
	for body, reason := range map[string]string{
		`{"credits": 9223372036854775807}`:  "invalid_field (credits)",
		`{"credits": 1000000000001}`:        "invalid_field (credits)",
		`{"credits": -1}`:                   "invalid_field (credits)",
		`{"credit": 5}`:                     "invalid_field (credit)",
		`{"plan": "paid", "role": "admin"}`: "invalid_field (role)",
		`[]`:                                "invalid_field (body)",
		`{"credits": 1} {"credits": 2}`:     "invalid_field (body)",
	} {
		r := e.Do(testenv.Req{Method: "PATCH", Path: path, Admin: true, Body: []byte(body), ContentType: "application/json"})
		e.Want(r, 400, reason)
	}
	e.Want(e.Do(testenv.Req{Method: "PATCH", Path: path, Admin: true, JSON: map[string]any{"credits": httpapi.MaxCredits}}), 200, "")
	e.Want(e.Do(testenv.Req{Method: "PUT", Path: "/admin/credit-costs/upsize", Admin: true, Body: []byte(`{"2x": 1000000000001}`), ContentType: "application/json"}), 400, "invalid_field (2x)")
	e.Want(e.Do(testenv.Req{Method: "POST", Path: fmt.Sprintf("/admin/users/%d/api-keys", u.ID), Admin: true, JSON: map[string]any{"expires": "x"}}), 400, "invalid_field (expires)")

	m := e.Do(testenv.Req{Method: "GET", Path: "/admin/models/upsize", Admin: true})
	if m.Status != 200 || m.JSON()["model"] != nil {
		t.Fatalf("model unset: %s", m)
	}
	e.Configure()
	m = e.Do(testenv.Req{Method: "GET", Path: "/admin/models/upsize", Admin: true})
	c := e.Do(testenv.Req{Method: "GET", Path: "/admin/credit-costs/upsize", Admin: true})
	if m.JSON()["model"] != "lanczos3" || fmt.Sprint(c.JSON()) != "map[2x:1 4x:2 8x:4]" {
		t.Fatalf("settings read back: %s %s", m, c)
	}
}

// 7. A result side over its format's limit is refused at admission, with nothing charged.
func TestFormatSideLimitsAtAdmission(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true})
	e.Configure()
	u := e.NewUser("paid", 100)
	webp := e.UploadOK(u.Key, testimg.EncodeWebP(testimg.Gradient(4200, 100)))
	jpeg := e.UploadOK(u.Key, testimg.EncodeJPEG(testimg.Gradient(1, 9000)))
	e.Want(e.Upsize(context.Background(), u.Key, webp, "4x", "side-webp"), 422, "image_too_large") // 16,800 > 16,383
	e.Want(e.Upsize(context.Background(), u.Key, jpeg, "8x", "side-jpeg"), 422, "image_too_large") // 72,000 > 65,500
	if c := e.Credits(u.ID); c != 100 {
		t.Fatalf("credits %d", c)
	}
	if n, _ := e.Queue.Backlog(context.Background()); n.Tasks != 0 || n.Work != 0 {
		t.Fatalf("%+v enqueued for refused requests", n)
	}
}

// 5. A request never expires while queued: one admitted while no worker runs, and picked up after
// REQUEST_TTL has passed, still completes and is charged once.
func TestQueuedRequestOutlivesRequestTTL(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, RequestTTL: time.Second, WaitTimeout: 200 * time.Millisecond})
	e.Configure()
	u := e.NewUser("paid", 10)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	e.Want(e.Upsize(context.Background(), u.Key, id, "2x", "patient"), 202, "")
	time.Sleep(1500 * time.Millisecond)
	e.StartWorker()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := e.RequestState(u.Key, "patient")
		if r.Status == 200 && r.JSON()["state"] == "completed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("request after REQUEST_TTL: %s", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c := e.Credits(u.ID); c != 9 {
		t.Fatalf("credits %d, want 9 (charged once)", c)
	}
	// Its outcome is then kept for REQUEST_TTL only.
	if ttl := e.RDB.PTTL(context.Background(), store.DefaultKeys.Request(u.ID, "patient")).Val(); ttl <= 0 || ttl > time.Second {
		t.Fatalf("completed request kept for %s", ttl)
	}
}

// 13. One user cannot fill the queue: past MAX_QUEUED_PER_USER open requests, 429 too_many_requests
// with Retry-After and nothing charged; other users are not held up.
func TestOneUserCannotFillTheQueue(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, MaxQueuedPerUser: 3, WaitTimeout: 50 * time.Millisecond})
	e.Configure()
	u := e.NewUser("paid", 100)
	other := e.NewUser("paid", 100)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	otherID := e.UploadOK(other.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	var wg sync.WaitGroup
	statuses := make([]int, 10)
	for i := range statuses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := e.Upsize(context.Background(), u.Key, id, "2x", fmt.Sprintf("many-%d", i))
			statuses[i] = r.Status
			if r.Status == 429 && (r.Reason() != "too_many_requests" || r.Header.Get("Retry-After") == "") {
				t.Errorf("429 %s, Retry-After %q", r, r.Header.Get("Retry-After"))
			}
		}()
	}
	wg.Wait()
	count := map[int]int{}
	for _, s := range statuses {
		count[s]++
	}
	if count[202] != 3 || count[429] != 7 {
		t.Fatalf("answers %v; want 3 accepted and 7 too_many_requests", count)
	}
	if c := e.Credits(u.ID); c != 97 {
		t.Fatalf("credits %d, want 97", c)
	}
	e.Want(e.Upsize(context.Background(), other.Key, otherID, "2x", "not-held-up"), 202, "")
	// Canceling one frees a place.
	e.Want(e.Cancel(u.Key, "many-0"), 200, "")
	for i := 0; i < 10; i++ {
		e.Cancel(u.Key, fmt.Sprintf("many-%d", i))
	}
	e.Want(e.Upsize(context.Background(), u.Key, id, "2x", "after-cancel"), 202, "")
}

// 6. Cancels of made-up ids leave a bounded number of tombstones per user.
func TestCancelsOfUnknownIdsAreBounded(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, MaxTombstones: 20})
	u := e.NewUser("paid", 0)
	for i := 0; i < 200; i++ {
		e.Want(e.Cancel(u.Key, fmt.Sprintf("ghost-%d", i)), 200, "")
	}
	keys, err := e.RDB.Keys(context.Background(), store.DefaultKeys.Request(u.ID, "*")).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 20 {
		t.Fatalf("%d request keys after 200 cancels of unknown ids; want 20", len(keys))
	}
	// The newest still work as tombstones: the upsize that follows its cancel answers 409.
	e.Configure()
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	e.Want(e.Upsize(context.Background(), u.Key, id, "2x", "ghost-199"), 409, "user_canceled_request")
}

// With BLOB_REDIRECT_TTL, an object store serves the bytes through a presigned URL; a filesystem store
// has none to give and streams them as before.
func TestFileRedirectToPresignedURL(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, FileRedirect: time.Minute})
	u := e.NewUser("paid", 0)
	src := testimg.EncodePNG(testimg.Gradient(40, 30))
	id := e.UploadOK(u.Key, src)
	path := fmt.Sprintf("/api/images/%d/file", id)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", e.Server.URL+path, nil)
	req.Header.Set("X-Api-Key", u.Key)
	res, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if !strings.HasPrefix(e.Config.BlobURL, "s3://") {
		if res.StatusCode != 200 {
			t.Fatalf("file store: HTTP %d, want the bytes", res.StatusCode)
		}
		return
	}
	loc := res.Header.Get("Location")
	if res.StatusCode != http.StatusTemporaryRedirect || loc == "" {
		t.Fatalf("object store: HTTP %d, Location %q", res.StatusCode, loc)
	}
	got, err := http.Get(loc) // no API key: the URL is the credential
	if err != nil {
		t.Fatal(err)
	}
	defer got.Body.Close()
	body, _ := io.ReadAll(got.Body)
	if got.StatusCode != 200 || string(body) != string(src) || got.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("presigned GET: HTTP %d, %d bytes, type %q", got.StatusCode, len(body), got.Header.Get("Content-Type"))
	}
	// Another user gets no URL.
	other := e.NewUser("paid", 0)
	e.Want(e.Do(testenv.Req{Method: "GET", Path: path, Key: other.Key}), 404, fmt.Sprintf("no_input_image (%d)", id))
}

// The operators' view of the queues (asynqmon) is behind the admin token, as a bearer token or a Basic
// password for browsers, and read-only by default.
func TestQueuesUIIsAdminOnlyAndReadOnly(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true})
	get := func(path string, set func(*http.Request)) *http.Response {
		req, _ := http.NewRequest("GET", e.Server.URL+path, nil)
		if set != nil {
			set(req)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	if r := get("/admin/queues/", nil); r.StatusCode != 401 || !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Basic") {
		t.Fatalf("no token: HTTP %d, WWW-Authenticate %q", r.StatusCode, r.Header.Get("WWW-Authenticate"))
	}
	if r := get("/admin/queues/", func(q *http.Request) { q.SetBasicAuth("ops", "wrong") }); r.StatusCode != 401 {
		t.Fatalf("wrong password: HTTP %d", r.StatusCode)
	}
	if r := get("/admin/queues/", func(q *http.Request) { q.SetBasicAuth("ops", e.AdminToken) }); r.StatusCode != 200 ||
		!strings.HasPrefix(r.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("Basic with the admin token: HTTP %d %s", r.StatusCode, r.Header.Get("Content-Type"))
	}
	bearer := func(q *http.Request) { q.Header.Set("Authorization", "Bearer "+e.AdminToken) }
	if r := get("/admin/queues/api/queues", bearer); r.StatusCode != 200 {
		t.Fatalf("queues as JSON: HTTP %d", r.StatusCode)
	}
	req, _ := http.NewRequest("DELETE", e.Server.URL+"/admin/queues/api/queues/upsize_paid", nil)
	bearer(req)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode < 400 {
		t.Fatalf("read-only: deleting a queue answered %d", res.StatusCode)
	}
}
