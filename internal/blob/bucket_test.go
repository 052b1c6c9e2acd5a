package blob

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"upsize/internal/tests3"
)

// recorder records the S3 requests of a store and the bytes read from their answers.
type recorder struct {
	mu   sync.Mutex
	reqs []*recorded
}

type recorded struct {
	method, rng string
	read        atomic.Int64
}

func (r *recorder) wrap(base http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		rec := &recorded{method: req.Method, rng: req.Header.Get("Range")}
		r.mu.Lock()
		r.reqs = append(r.reqs, rec)
		r.mu.Unlock()
		resp, err := base.RoundTrip(req)
		if err == nil {
			resp.Body = &countingBody{ReadCloser: resp.Body, n: &rec.read}
		}
		return resp, err
	})
}

func (r *recorder) take() []*recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.reqs
	r.reqs = nil
	return l
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// http.ServeContent over each store: HEAD, whole GETs, single and multiple ranges. On S3, a HEAD makes no
// GET, and a small range is one GET of at most the first window, of which only the range is read.
func TestServeContentRanges(t *testing.T) {
	t.Parallel()
	var rec recorder
	stores := testStores(t, Options{transport: rec.wrap})
	const size = 20<<20 + 123
	data := patternBytes(size)
	for _, ts := range stores {
		t.Run(ts.name, func(t *testing.T) {
			putBytes(t, ts.s, "img-1", data)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				o, err := ts.s.Open(r.Context(), "img-1")
				if err != nil {
					http.Error(w, err.Error(), 500)
					return
				}
				defer o.Close()
				// As handleGetFile: the type is known (else ServeContent reads 512 bytes to sniff it).
				w.Header().Set("Content-Type", "image/png")
				http.ServeContent(w, r, "", o.ModTime(), o)
			}))
			defer srv.Close()
			get := func(method, rng string) (*http.Response, []byte) {
				t.Helper()
				req, _ := http.NewRequest(method, srv.URL, nil)
				if rng != "" {
					req.Header.Set("Range", rng)
				}
				rec.take()
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				return resp, b
			}
			s3Requests := func(want string) {
				t.Helper()
				if ts.name != "s3" {
					return
				}
				var got []string
				for _, r := range rec.take() {
					got = append(got, fmt.Sprintf("%s %s %d", r.method, r.rng, r.read.Load()))
				}
				if strings.Join(got, "; ") != want {
					t.Errorf("S3 requests:\n got %s\nwant %s", strings.Join(got, "; "), want)
				}
			}

			resp, body := get(http.MethodHead, "")
			if resp.StatusCode != 200 || resp.ContentLength != size || len(body) != 0 || resp.Header.Get("Last-Modified") == "" {
				t.Fatalf("HEAD: %s, length %d", resp.Status, resp.ContentLength)
			}
			s3Requests("HEAD  0")

			resp, body = get(http.MethodGet, "bytes=1000-1999")
			if resp.StatusCode != 206 || !bytes.Equal(body, data[1000:2000]) ||
				resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 1000-1999/%d", size) {
				t.Fatalf("range: %s %q, %d bytes", resp.Status, resp.Header.Get("Content-Range"), len(body))
			}
			// One GET from the range's start for the first window; 1000 bytes of it read.
			s3Requests(fmt.Sprintf("HEAD  0; GET bytes=1000-%d 1000", 1000+readWindowMin-1))

			resp, body = get(http.MethodGet, "bytes=-100")
			if resp.StatusCode != 206 || !bytes.Equal(body, data[size-100:]) {
				t.Fatalf("suffix range: %s, %d bytes", resp.Status, len(body))
			}
			s3Requests(fmt.Sprintf("HEAD  0; GET bytes=%d-%d 100", size-100, size-1))

			resp, body = get(http.MethodGet, "bytes=0-9,5000000-5000009")
			if resp.StatusCode != 206 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges") ||
				!bytes.Contains(body, data[0:10]) || !bytes.Contains(body, data[5000000:5000010]) {
				t.Fatalf("two ranges: %s %q", resp.Status, resp.Header.Get("Content-Type"))
			}

			resp, body = get(http.MethodGet, "")
			if resp.StatusCode != 200 || !bytes.Equal(body, data) {
				t.Fatalf("GET: %s, %d bytes", resp.Status, len(body))
			}
			// Windows of 4, 8, then the last 8 MiB and 123 bytes.
			s3Requests(fmt.Sprintf("HEAD  0; GET bytes=0-%d %d; GET bytes=%d-%d %d; GET bytes=%d-%d %d",
				4<<20-1, 4<<20, 4<<20, 12<<20-1, 8<<20, 12<<20, size-1, size-12<<20))
		})
	}
}

// A 176 MB result streamed by a callback that never holds it: the heap grows by the transfer buffers
// only. Not parallel: the heap is the process's.
func TestStreamedPutMemory(t *testing.T) {
	const size = 176 << 20
	want := sha256.New()
	pattern(size, 64<<10)(want)
	wantSum := hex.EncodeToString(want.Sum(nil))
	for _, ts := range testStores(t, Options{}) {
		t.Run(ts.name, func(t *testing.T) {
			ctx := context.Background()
			runtime.GC()
			var base runtime.MemStats
			runtime.ReadMemStats(&base)
			baseRSS := rss()
			var peakHeap, peakLive, peakRSS uint64
			live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
			metrics.Read(live)
			baseLive := live[0].Value.Uint64()
			stop := make(chan struct{})
			sampled := make(chan struct{})
			go func() {
				defer close(sampled)
				tick := time.NewTicker(20 * time.Millisecond)
				defer tick.Stop()
				for {
					var m runtime.MemStats
					runtime.ReadMemStats(&m)
					metrics.Read(live)
					peakHeap = max(peakHeap, m.HeapAlloc)
					peakLive = max(peakLive, live[0].Value.Uint64())
					peakRSS = max(peakRSS, rss())
					select {
					case <-stop:
						return
					case <-tick.C:
					}
				}
			}()
			began := time.Now()
			info, err := ts.s.Put(ctx, "img-1", pattern(size, 64<<10))
			took := time.Since(began)
			close(stop)
			<-sampled
			if err != nil {
				t.Fatal(err)
			}
			if info.Size != size || info.SHA256 != wantSum {
				t.Fatalf("info %+v, want sha %s", info, wantSum)
			}
			heapGrowth := int64(peakHeap) - int64(base.HeapAlloc)
			liveGrowth := int64(peakLive) - int64(baseLive)
			rssGrowth := int64(peakRSS) - int64(baseRSS)
			t.Logf("%s: put %d MiB in %s; Go heap: peak %+.1f MiB (garbage not yet collected included), live at GC %+.1f MiB; RSS %+.1f MiB (race detector's shadow memory included under -race)",
				ts.name, size>>20, took.Round(time.Millisecond), mib(heapGrowth), mib(liveGrowth), mib(rssGrowth))
			// The transfer manager's buffers: up to 16 MiB read before it decides on a multipart upload,
			// then Concurrency+1 parts of 8 MiB; the rest is garbage the GC collects.
			if liveGrowth > 72<<20 || heapGrowth > 144<<20 {
				t.Errorf("the heap grew by %.1f MiB (live %.1f MiB) writing %d MiB", mib(heapGrowth), mib(liveGrowth), size>>20)
			}

			// Read it back, streaming, and check it.
			o, err := ts.s.Open(ctx, "img-1")
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			h := sha256.New()
			if n, err := io.Copy(h, o); err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != wantSum {
				t.Fatalf("read back %d bytes, %v, sum matches %v", n, err, hex.EncodeToString(h.Sum(nil)) == wantSum)
			}
			if left := ts.leftovers(t); len(left) != 0 {
				t.Errorf("unfinished writes left: %v", left)
			}
			ts.s.Delete(ctx, "img-1")
		})
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// rss is the process's resident set, from /proc (0 elsewhere).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

// Readers of an object being rewritten read one version or fail: never a mix (the GETs of one read are
// conditional on the ETag its HEAD saw).
func TestBucketReadersNeverMixVersions(t *testing.T) {
	t.Parallel()
	b, _, _ := testBucket(t, Options{readWindow: 16 << 10}) // several GETs per read
	ctx := context.Background()
	a, c := bytes.Repeat([]byte{'a'}, 256<<10), bytes.Repeat([]byte{'b'}, 256<<10)
	putBytes(t, b, "img-4", a)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 15 {
			for _, d := range [][]byte{c, a} {
				if _, err := b.Put(ctx, "img-4", func(w io.Writer) error { _, err := w.Write(d); return err }); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	reads, failed := 0, 0
	for running := true; running; reads++ {
		select {
		case <-done:
			running = false
		default:
		}
		got, err := ReadAll(ctx, b, "img-4")
		if err != nil {
			if !strings.Contains(err.Error(), "changed while it was read") {
				t.Fatalf("read: %v", err)
			}
			failed++
			continue
		}
		if !bytes.Equal(got, a) && !bytes.Equal(got, c) {
			t.Fatalf("read %d bytes that are neither version", len(got))
		}
	}
	t.Logf("%d reads during 30 rewrites, %d failed as the object changed under them", reads, failed)
}

// Presigned GET URLs work without credentials, set the answer's headers when asked, and expire.
func TestBucketSignedURL(t *testing.T) {
	t.Parallel()
	b, _, _ := testBucket(t, Options{})
	ctx := context.Background()
	data := patternBytes(100_000)
	putBytes(t, b, "img-9", data)
	get := func(u string) (*http.Response, []byte) {
		t.Helper()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}
	u, err := b.SignedURL(ctx, "img-9", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(u, tests3.SecretKey) {
		t.Fatal("the secret is in the URL")
	}
	if resp, body := get(u); resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("GET of the signed URL: %s, %d bytes", resp.Status, len(body))
	}
	u, err = b.SignedURLWith(ctx, "img-9", time.Minute, SignOptions{ContentType: "image/png", CacheControl: "private, max-age=60"})
	if err != nil {
		t.Fatal(err)
	}
	if resp, _ := get(u); resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" ||
		resp.Header.Get("Cache-Control") != "private, max-age=60" {
		t.Fatalf("with headers: %s %q %q", resp.Status, resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"))
	}
	if _, err := b.SignedURL(ctx, "../x", time.Minute); err == nil {
		t.Error("invalid key signed")
	}
	u, err = b.SignedURL(ctx, "img-9", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond)
	if resp, _ := get(u); resp.StatusCode != http.StatusForbidden {
		t.Errorf("expired signed URL: %s", resp.Status)
	}
}

// Against a server that is gone, every operation fails, within a bound, never hangs; and a request
// honours its context.
func TestBucketServerGone(t *testing.T) {
	t.Parallel()
	tests3.SetEnv()
	srv := tests3.StartServer(t)
	const bucket = "gone"
	if _, err := tests3.Client(srv.Addr).CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	b, _, _ := openTestURL(t, tests3.URL(srv.Addr, bucket), Options{})
	ctx := context.Background()
	putBytes(t, b, "img-1", patternBytes(1<<20))
	if err := b.Check(ctx); err != nil {
		t.Fatal(err)
	}
	open, err := b.Open(ctx, "img-1") // opened before, read after
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	srv.Kill()

	const bound = 30 * time.Second
	ops := map[string]func() error{
		"put":    func() error { _, err := b.Put(ctx, "img-2", pattern(1<<20, 4096)); return err },
		"put-mp": func() error { _, err := b.Put(ctx, "img-3", pattern(40<<20, 64<<10)); return err },
		"open":   func() error { _, err := b.Open(ctx, "img-1"); return err },
		"read":   func() error { _, err := io.ReadAll(open); return err },
		"delete": func() error { return b.Delete(ctx, "img-1") },
		"walk":   func() error { return b.Walk(ctx, func(Entry) error { return nil }) },
		"temps":  func() error { return b.WalkTemps(ctx, func(Entry) error { return nil }) },
		"delold": func() error { _, err := b.DeleteIfOlder(ctx, "img-1", time.Now()); return err },
		"rmtemp": func() error { _, err := b.RemoveTemp(ctx, Entry{Key: "img-1", Temp: "x"}, time.Now()); return err },
		"check":  func() error { return b.Check(ctx) },
	}
	var wg sync.WaitGroup
	for name, op := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			began := time.Now()
			done := make(chan error, 1)
			go func() { done <- op() }()
			select {
			case err := <-done:
				took := time.Since(began)
				if err == nil {
					t.Errorf("%s succeeded against a dead server", name)
				}
				if took > bound {
					t.Errorf("%s took %s", name, took)
				}
				t.Logf("%s: failed in %s: %v", name, took.Round(time.Millisecond), err)
			case <-time.After(2 * bound):
				t.Errorf("%s hangs", name)
			}
		}()
	}
	wg.Wait()
}

// A server that accepts connections and never answers: a request fails after ResponseHeaderTimeout per
// attempt, or when its context ends, whichever is first; a closed port fails at once.
func TestBucketServerSilentOrClosed(t *testing.T) {
	t.Parallel()
	tests3.SetEnv()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c) // read requests, answer nothing
		}
	}()
	ctx := context.Background()
	silent, _, _ := openTestURL(t, tests3.URL(l.Addr().String(), "silent"), Options{ResponseHeaderTimeout: 300 * time.Millisecond, MaxAttempts: 2})
	began := time.Now()
	_, err = silent.Open(ctx, "img-1")
	t.Logf("silent server, 2 attempts of 300 ms: %v after %s", err, time.Since(began).Round(time.Millisecond))
	if err == nil || time.Since(began) > 10*time.Second {
		t.Errorf("open: %v after %s", err, time.Since(began))
	}

	patient, _, _ := openTestURL(t, tests3.URL(l.Addr().String(), "silent"), Options{})
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	began = time.Now()
	_, err = patient.Put(cctx, "img-1", pattern(100, 10))
	t.Logf("silent server, context of 500 ms: %v after %s", err, time.Since(began).Round(time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(began) > 5*time.Second {
		t.Errorf("put: %v after %s", err, time.Since(began))
	}

	c, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := c.Addr().String()
	c.Close()
	b, _, _ := openTestURL(t, tests3.URL(closed, "closed"), Options{})
	began = time.Now()
	_, err = b.Open(ctx, "img-1")
	t.Logf("closed port: %v after %s", err, time.Since(began).Round(time.Millisecond))
	if err == nil || errors.Is(err, ErrNotFound) || time.Since(began) > 15*time.Second {
		t.Errorf("open: %v after %s", err, time.Since(began))
	}
}

// BLOB_URL forms: what Open accepts, and the errors of what it refuses.
func TestOpenURL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, "file://"+filepath.ToSlash(dir))
	if fs, ok := st.(*FS); err != nil || !ok || fs.Dir != dir {
		t.Fatalf("file URL: %T %v", st, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, tmpDir)); err != nil || !fi.IsDir() {
		t.Fatal("FS not set up")
	}
	for raw, want := range map[string]string{
		"file:///var/blobs":          "/var/blobs",
		"file://localhost/var/blobs": "/var/blobs",
		"file://./var/blobs":         "var/blobs",
		"file://./var/blobs/":        "var/blobs",
		"file://../shared/blobs":     "../shared/blobs",
		"file://.":                   ".",
		"file:///my%20blobs":         "/my blobs",
	} {
		u, err := parseURL(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := fileDir(u); err != nil || got != filepath.FromSlash(want) {
			t.Errorf("%s: %q %v, want %q", raw, got, err, want)
		}
	}

	raw := tests3.Bucket(t)
	st, err = Open(ctx, raw)
	b, ok := st.(*Bucket)
	if err != nil || !ok {
		t.Fatalf("s3 URL: %T %v", st, err)
	}
	defer b.Close()
	if err := b.Check(ctx); err != nil {
		t.Errorf("check: %v", err)
	}
	if !strings.HasPrefix(b.String(), "s3://t-") {
		t.Errorf("name %s", b)
	}
	if st, err := Open(ctx, raw+"&prefix=a/b/&s3ForcePathStyle=true&request_checksum_calculation=when_required"); err != nil || st.(*Bucket).prefix != "a/b/" {
		t.Errorf("with more parameters: %v", err)
	}
	missing, _ := Open(ctx, tests3.URL(tests3.Addr(), "no-such-bucket-here"))
	if err := missing.(*Bucket).Check(ctx); err == nil {
		t.Error("a missing bucket checks fine")
	}
	if _, err := missing.Put(ctx, "img-1", pattern(10, 10)); err == nil {
		t.Error("put into a missing bucket succeeded")
	}

	for raw, want := range map[string]string{
		"":                                        "empty",
		"var/blobs":                               "no scheme",
		"/var/blobs":                              "no scheme",
		"file:var/blobs":                          "file:///abs/path",
		"file://host/var/blobs":                   `host "host"`,
		"file:///var/blobs?mode=1":                "no query",
		"file://":                                 "no directory",
		"file:///":                                "no directory",
		"ftp://x/y":                               `unknown scheme "ftp"`,
		"s3://":                                   "no bucket",
		"s3://b/some/path?region=r":               "prefix=some/path/",
		"s3://key:secret@b?region=r":              "credentials do not go in the URL",
		"s3://b:9000?region=r":                    "endpoint=",
		"s3://b?region=r&bogus=1":                 `unknown query parameter "bogus"`,
		"s3://b?region=r&key=img-1":               "single-object",
		"s3://b?region=r&prefix=/abs":             "no leading slash",
		"s3://b?region=r&prefix=a/../b":           "no ..",
		"s3://b?region=r&use_path_style=maybe":    `"use_path_style"`,
		"s3://b?region=r&ssetype=rot13":           `"ssetype"`,
		"s3://b?region=r&endpoint=127.0.0.1:7070": "want http://host:port",
		"s3://b?endpoint=http://127.0.0.1:7070":   "no region",
		"gs://bucket":                             "-tags blob_clouds",
		"azblob://container":                      "-tags blob_clouds",
		"s3://b?region=r#frag":                    "fragment",
	} {
		st, err := Open(ctx, raw)
		if err == nil {
			t.Errorf("%q: accepted (%T)", raw, st)
			continue
		}
		if !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "blob: ") || strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: error %q, want it to say %q", raw, err, want)
		}
	}
	if _, err := OpenWith(ctx, raw, Options{PartSize: 1 << 20}); err == nil {
		t.Error("a part size below 5 MiB accepted")
	}
}
