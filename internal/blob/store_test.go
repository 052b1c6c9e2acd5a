package blob

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"upsize/internal/tests3"
)

// The same contract, run against each store: FS in a temporary directory, and Bucket on a real S3
// server (versitygw, scripts/s3-local.sh) in a bucket of the test's own.

type testStore struct {
	name string
	s    Store
	w    Walker
	// leftovers lists what unfinished writes left: FS temporary files, S3 multipart uploads.
	leftovers func(t *testing.T) []string
	// unfinished makes an unfinished write of key, as a crash would leave it.
	unfinished func(t *testing.T, key string)
	// foreign puts something that is not an object of ours (a bad key, another directory).
	foreign func(t *testing.T, name string)
}

func testStores(t *testing.T, o Options) []testStore {
	t.Helper()
	dir := t.TempDir()
	fs, err := NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, client, bucket := testBucket(t, o)
	return []testStore{
		{
			name: "fs", s: fs, w: fs,
			leftovers: func(t *testing.T) []string {
				var names []string
				es, _ := os.ReadDir(filepath.Join(dir, tmpDir))
				for _, e := range es {
					names = append(names, e.Name())
				}
				return names
			},
			unfinished: func(t *testing.T, key string) {
				f, err := os.CreateTemp(filepath.Join(dir, tmpDir), key+".*")
				if err != nil {
					t.Fatal(err)
				}
				f.WriteString("partial")
				f.Close()
			},
			foreign: func(t *testing.T, name string) {
				p := filepath.Join(dir, "00", filepath.FromSlash(name))
				os.MkdirAll(filepath.Dir(p), 0o750)
				if err := os.WriteFile(p, []byte("x"), 0o640); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "s3", s: b, w: b,
			leftovers: func(t *testing.T) []string { return uploads(t, client, bucket) },
			unfinished: func(t *testing.T, key string) {
				ctx := context.Background()
				up, err := client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: aws.String(key)})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := client.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: aws.String(key),
					UploadId: up.UploadId, PartNumber: aws.Int32(1), Body: strings.NewReader("partial")}); err != nil {
					t.Fatal(err)
				}
			},
			foreign: func(t *testing.T, name string) {
				if _, err := client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &bucket,
					Key: aws.String(name), Body: strings.NewReader("x")}); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
}

// testBucket opens a fresh bucket of the test's own, with o; it also returns a plain S3 client of the
// server and the bucket's name, to look behind the store's back.
func testBucket(t *testing.T, o Options) (*Bucket, *s3.Client, string) {
	t.Helper()
	return openTestURL(t, tests3.Bucket(t), o)
}

func openTestURL(t *testing.T, raw string, o Options) (*Bucket, *s3.Client, string) {
	t.Helper()
	st, err := OpenWith(context.Background(), raw, o)
	if err != nil {
		t.Fatal(err)
	}
	b := st.(*Bucket)
	t.Cleanup(func() { b.Close() })
	u, _ := url.Parse(raw)
	return b, tests3.Client(tests3.Addr()), u.Host
}

// uploads lists a bucket's multipart uploads as "key upload-id".
func uploads(t *testing.T, c *s3.Client, bucket string) []string {
	t.Helper()
	out, err := c.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: &bucket})
	if err != nil {
		t.Fatal(err)
	}
	var l []string
	for _, u := range out.Uploads {
		l = append(l, aws.ToString(u.Key)+" "+aws.ToString(u.UploadId))
	}
	return l
}

// pattern writes size bytes in writes of at most chunk bytes, without ever holding more than 64 KiB:
// blocks of 64 KiB, each distinct (its offset is in it); the bytes do not depend on chunk.
func pattern(size int64, chunk int) func(io.Writer) error {
	const block = 64 << 10
	return func(w io.Writer) error {
		buf := make([]byte, block)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		for off := int64(0); off < size; off += block {
			binary.BigEndian.PutUint64(buf, uint64(off))
			b := buf[:min(block, size-off)]
			for len(b) > 0 {
				n := min(chunk, len(b))
				if _, err := w.Write(b[:n]); err != nil {
					return err
				}
				b = b[n:]
			}
		}
		return nil
	}
}

func patternBytes(size int64) []byte {
	var b bytes.Buffer
	pattern(size, 64<<10)(&b)
	return b.Bytes()
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func putBytes(t *testing.T, s Store, key string, data []byte) Info {
	t.Helper()
	info, err := s.Put(context.Background(), key, func(w io.Writer) error { _, err := w.Write(data); return err })
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// Put, then Open: size, SHA-256, bytes and time; an overwrite; Delete, also of a missing key; ErrNotFound.
func TestStorePutOpenDelete(t *testing.T) {
	t.Parallel()
	for _, ts := range testStores(t, Options{}) {
		t.Run(ts.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := ts.s
			for _, size := range []int64{0, 1, 300_000, 20 << 20} { // 20 MiB: a multipart upload on S3
				key := fmt.Sprintf("img-%d", size)
				data := patternBytes(size)
				before := time.Now().Add(-2 * time.Second) // S3 times are to the second
				info, err := s.Put(ctx, key, pattern(size, 10_000))
				if err != nil {
					t.Fatalf("%d bytes: %v", size, err)
				}
				if info.Size != size || info.SHA256 != sha(data) {
					t.Fatalf("%d bytes: info %+v, want sha %s", size, info, sha(data))
				}
				o, err := s.Open(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				if o.Size() != size || o.ModTime().Before(before) || o.ModTime().After(time.Now().Add(2*time.Second)) {
					t.Errorf("%d bytes: object size %d, time %s", size, o.Size(), o.ModTime())
				}
				o.Close()
				got, err := ReadAll(ctx, s, key)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("%d bytes: read back %d bytes (equal %v), %v", size, len(got), bytes.Equal(got, data), err)
				}
			}
			// An overwrite replaces the whole object.
			putBytes(t, s, "img-1", []byte("second"))
			if got, err := ReadAll(ctx, s, "img-1"); err != nil || string(got) != "second" {
				t.Fatalf("after overwrite: %q %v", got, err)
			}
			if err := s.Delete(ctx, "img-1"); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(ctx, "img-1"); err != nil {
				t.Fatalf("deleting twice: %v", err)
			}
			if err := s.Delete(ctx, "img-404"); err != nil {
				t.Fatalf("deleting a missing key: %v", err)
			}
			if _, err := s.Open(ctx, "img-1"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("open after delete: %v", err)
			}
			if _, err := s.Open(ctx, "img-404"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("open of a missing key: %v", err)
			}
			for _, k := range []string{"../etc/passwd", "a/b", "", ".hidden", "UPPER"} {
				if _, err := s.Put(ctx, k, func(io.Writer) error { return nil }); err == nil {
					t.Errorf("key %q accepted by Put", k)
				}
				if _, err := s.Open(ctx, k); err == nil || errors.Is(err, ErrNotFound) {
					t.Errorf("key %q: Open said %v", k, err)
				}
			}
			if left := ts.leftovers(t); len(left) != 0 {
				t.Errorf("unfinished writes left: %v", left)
			}
		})
	}
}

// A write whose callback fails, or whose context is canceled (before, or in the middle, also after a
// multipart upload began), leaves no object, no temporary file and no multipart upload; an object it
// was to replace is intact.
func TestStoreFailedPutLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, ts := range testStores(t, Options{}) {
		t.Run(ts.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := ts.s
			encoder := errors.New("encoder failed")
			failAfter := func(n int64) func(io.Writer) error {
				return func(w io.Writer) error {
					if err := pattern(n, 64<<10)(w); err != nil {
						return err
					}
					return encoder
				}
			}
			cases := []struct {
				name  string
				ctx   func() (context.Context, context.CancelFunc)
				write func(cancel context.CancelFunc) func(io.Writer) error
				want  error
			}{
				{"callback fails at 1 MiB", nil, func(context.CancelFunc) func(io.Writer) error { return failAfter(1 << 20) }, encoder},
				{"callback fails at 40 MiB (multipart)", nil, func(context.CancelFunc) func(io.Writer) error { return failAfter(40 << 20) }, encoder},
				{"callback fails at once", nil, func(context.CancelFunc) func(io.Writer) error { return failAfter(0) }, encoder},
				{"canceled before", func() (context.Context, context.CancelFunc) {
					c, cancel := context.WithCancel(ctx)
					cancel()
					return c, cancel
				}, func(context.CancelFunc) func(io.Writer) error { return pattern(1000, 100) }, context.Canceled},
				{"canceled at 1 MiB", nil, func(cancel context.CancelFunc) func(io.Writer) error {
					return func(w io.Writer) error {
						pattern(1<<20, 64<<10)(w)
						cancel()
						return pattern(1<<20, 64<<10)(w) // writing on, maybe without an error
					}
				}, context.Canceled},
				{"canceled at 20 MiB (multipart)", nil, func(cancel context.CancelFunc) func(io.Writer) error {
					return func(w io.Writer) error {
						pattern(20<<20, 64<<10)(w)
						cancel()
						return pattern(20<<20, 64<<10)(w)
					}
				}, context.Canceled},
			}
			for i, c := range cases {
				key := fmt.Sprintf("img-%d", 10+i)
				putBytes(t, s, "img-1", []byte("old"))
				for _, k := range []string{key, "img-1"} {
					cctx, cancel := context.WithCancel(ctx)
					if c.ctx != nil {
						cctx, cancel = c.ctx()
					}
					began := time.Now()
					_, err := s.Put(cctx, k, c.write(cancel))
					cancel()
					if err == nil {
						t.Fatalf("%s: Put of %s succeeded", c.name, k)
					}
					if c.want == encoder && !errors.Is(err, encoder) {
						t.Errorf("%s: error %v, want the callback's", c.name, err)
					}
					if c.want == context.Canceled && !errors.Is(err, context.Canceled) {
						t.Errorf("%s: error %v, want context.Canceled", c.name, err)
					}
					t.Logf("%s: %s failed in %s: %v", c.name, k, time.Since(began).Round(time.Millisecond), err)
				}
				if _, err := s.Open(ctx, key); !errors.Is(err, ErrNotFound) {
					t.Errorf("%s: a failed write is visible: %v", c.name, err)
				}
				if got, err := ReadAll(ctx, s, "img-1"); err != nil || string(got) != "old" {
					t.Errorf("%s: the object a failed write was to replace: %q %v", c.name, got, err)
				}
				if left := ts.leftovers(t); len(left) != 0 {
					t.Errorf("%s: unfinished writes left: %v", c.name, left)
				}
			}
		})
	}
}

// Walk, WalkTemps, DeleteIfOlder and RemoveTemp as the janitor uses them.
func TestStoreWalker(t *testing.T) {
	t.Parallel()
	for _, ts := range testStores(t, Options{listPage: 7}) { // S3: listings of several pages
		t.Run(ts.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			want := map[string]int64{}
			for i := range 40 {
				key := fmt.Sprintf("img-%d", i)
				putBytes(t, ts.s, key, bytes.Repeat([]byte("x"), i))
				want[key] = int64(i)
			}
			for _, name := range []string{"UPPER", "sub/img-1", "img-1!"} {
				ts.foreign(t, name)
			}
			temps := map[string]bool{}
			for i := range 5 {
				key := fmt.Sprintf("img-%d", 100+i)
				ts.unfinished(t, key)
				temps[key] = true
			}

			got := listAll(t, ts.w.Walk)
			if len(got) != len(want) {
				t.Fatalf("walked %d objects, want %d: %v", len(got), len(want), keysOf(got))
			}
			for k, size := range want {
				if e, ok := got[k]; !ok || e.Size != size || e.Temp != "" || time.Since(e.ModTime) > time.Minute {
					t.Errorf("%s: %+v (present %v)", k, e, ok)
				}
			}
			// fn's error stops the walk.
			stop := errors.New("stop")
			n := 0
			if err := ts.w.Walk(ctx, func(Entry) error { n++; return stop }); err != stop || n != 1 {
				t.Errorf("walk stopped by its callback: %v after %d", err, n)
			}

			tl := listAll(t, ts.w.WalkTemps)
			if len(tl) != len(temps) {
				t.Fatalf("walked %d temporaries, want %d: %v", len(tl), len(temps), tl)
			}
			var te []Entry
			for _, e := range tl {
				if !temps[e.Key] || e.Temp == "" || time.Since(e.ModTime) > time.Minute {
					t.Errorf("temporary %+v", e)
				}
				te = append(te, e)
			}

			// The janitor's sweep: nothing is removed with a cutoff in the past (all is recent) ...
			past, future := time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
			for _, e := range te {
				if ok, err := ts.w.RemoveTemp(ctx, e, past); ok || err != nil {
					t.Errorf("recent temporary %s removed: %v %v", e.Temp, ok, err)
				}
			}
			if ok, err := ts.w.DeleteIfOlder(ctx, "img-3", past); ok || err != nil {
				t.Errorf("recent object deleted: %v %v", ok, err)
			}
			// ... and all with a cutoff after it, once.
			for _, e := range te {
				if ok, err := ts.w.RemoveTemp(ctx, e, future); !ok || err != nil {
					t.Errorf("old temporary %s not removed: %v %v", e.Temp, ok, err)
				}
				if ok, err := ts.w.RemoveTemp(ctx, e, future); ok || err != nil {
					t.Errorf("temporary %s removed twice: %v %v", e.Temp, ok, err)
				}
			}
			if left := ts.leftovers(t); len(left) != 0 {
				t.Errorf("temporaries left: %v", left)
			}
			if ok, err := ts.w.DeleteIfOlder(ctx, "img-3", future); !ok || err != nil {
				t.Errorf("old object not deleted: %v %v", ok, err)
			}
			if _, err := ts.s.Open(ctx, "img-3"); !errors.Is(err, ErrNotFound) {
				t.Errorf("deleted object: %v", err)
			}
			if ok, err := ts.w.DeleteIfOlder(ctx, "img-3", future); ok || err != nil {
				t.Errorf("deleting a missing object: %v %v", ok, err)
			}
			if _, err := ts.w.DeleteIfOlder(ctx, "../x", future); err == nil {
				t.Error("invalid key accepted")
			}
			if _, err := ts.w.RemoveTemp(ctx, Entry{Key: "img-1"}, future); err == nil {
				t.Error("a temporary without a name accepted")
			}

			// A walk that deletes what it sees sees everything once.
			seen := 0
			if err := ts.w.Walk(ctx, func(e Entry) error {
				seen++
				ok, err := ts.w.DeleteIfOlder(ctx, e.Key, future)
				if !ok || err != nil {
					return fmt.Errorf("%s: %v %v", e.Key, ok, err)
				}
				return nil
			}); err != nil || seen != len(want)-1 {
				t.Errorf("deleting walk: %d seen, %v", seen, err)
			}
			if left := listAll(t, ts.w.Walk); len(left) != 0 {
				t.Errorf("left after the deleting walk: %v", keysOf(left))
			}
		})
	}
}

// An unfinished write that was written to after the cutoff is kept even though it began before (S3:
// an upload whose last part is recent).
func TestRemoveTempKeepsAnUploadWrittenAfterTheCutoff(t *testing.T) {
	t.Parallel()
	b, c, bucket := testBucket(t, Options{})
	ctx := context.Background()
	began := time.Now()
	up, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: aws.String("img-5")})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // times are to the second
	if _, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: aws.String("img-5"), UploadId: up.UploadId,
		PartNumber: aws.Int32(1), Body: strings.NewReader("part")}); err != nil {
		t.Fatal(err)
	}
	es := listAll(t, b.WalkTemps)
	e, ok := es[aws.ToString(up.UploadId)]
	if !ok || len(es) != 1 {
		t.Fatalf("temporaries %v", es)
	}
	// After the upload began, before its part was written. (AWS reports when an upload began; versitygw
	// reports the last time it was written to, as Initiated: either way it is kept.)
	cutoff := began.Add(1500 * time.Millisecond)
	t.Logf("began %s, listed as begun %s, cutoff %s", began, e.ModTime, cutoff)
	if ok, err := b.RemoveTemp(ctx, e, cutoff); ok || err != nil {
		t.Fatalf("an upload written after the cutoff was removed: %v %v", ok, err)
	}
	// The entry's time is not trusted: the server's is.
	e.ModTime = time.Time{}
	if ok, err := b.RemoveTemp(ctx, e, cutoff); ok || err != nil {
		t.Fatalf("with a zero time in its entry: %v %v", ok, err)
	}
	if ok, err := b.RemoveTemp(ctx, Entry{Key: "img-5", Temp: "no-such-upload"}, time.Now().Add(time.Hour)); ok || err != nil {
		t.Fatalf("an unknown upload: %v %v", ok, err)
	}
	if ok, err := b.RemoveTemp(ctx, e, time.Now().Add(time.Hour)); !ok || err != nil {
		t.Fatalf("old upload: %v %v", ok, err)
	}
	if l := uploads(t, c, bucket); len(l) != 0 {
		t.Fatalf("uploads left: %v", l)
	}
}

// With prefix=, a store sees only its own objects and uploads; one without sees not the prefixed ones.
func TestBucketPrefix(t *testing.T) {
	t.Parallel()
	raw := tests3.Bucket(t)
	plain, c, bucket := openTestURL(t, raw, Options{})
	pre, _, _ := openTestURL(t, raw+"&prefix=tenant/", Options{})
	ctx := context.Background()
	putBytes(t, plain, "img-1", []byte("plain"))
	putBytes(t, pre, "img-1", []byte("prefixed"))
	putBytes(t, pre, "img-2", []byte("prefixed"))
	if got, _ := ReadAll(ctx, pre, "img-1"); string(got) != "prefixed" {
		t.Fatalf("prefixed read %q", got)
	}
	if got := keysOf(listAll(t, plain.Walk)); strings.Join(got, ",") != "img-1" {
		t.Errorf("plain walk: %v", got)
	}
	if got := keysOf(listAll(t, pre.Walk)); strings.Join(got, ",") != "img-1,img-2" {
		t.Errorf("prefixed walk: %v", got)
	}
	if _, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: aws.String("tenant/img-3")}); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, pre.WalkTemps); len(got) != 1 {
		t.Errorf("prefixed temporaries: %v", got)
	}
	for _, e := range listAll(t, pre.WalkTemps) {
		if e.Key != "img-3" {
			t.Errorf("prefixed temporary %+v", e)
		}
		if ok, err := pre.RemoveTemp(ctx, e, time.Now().Add(time.Hour)); !ok || err != nil {
			t.Errorf("remove prefixed temporary: %v %v", ok, err)
		}
	}
	if l := uploads(t, c, bucket); len(l) != 0 {
		t.Errorf("uploads left: %v", l)
	}
	if ok, err := pre.DeleteIfOlder(ctx, "img-1", time.Now().Add(time.Hour)); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if got, _ := ReadAll(ctx, plain, "img-1"); string(got) != "plain" {
		t.Errorf("the prefixed delete touched the plain object: %q", got)
	}
}

func listAll(t *testing.T, f func(context.Context, func(Entry) error) error) map[string]Entry {
	t.Helper()
	got := map[string]Entry{}
	if err := f(context.Background(), func(e Entry) error {
		name := e.Key
		if e.Temp != "" {
			name = e.Temp
		}
		if _, dup := got[name]; dup {
			t.Errorf("%s seen twice", name)
		}
		got[name] = e
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func keysOf(m map[string]Entry) []string {
	var l []string
	for k := range m {
		l = append(l, k)
	}
	sort.Strings(l)
	return l
}
