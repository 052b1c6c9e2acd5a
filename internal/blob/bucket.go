package blob

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	gcblob "gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// Bucket stores objects in an object store's bucket through gocloud.dev/blob: S3 or an S3-compatible
// server (s3://), Google Cloud Storage (gs://), Azure Blob Storage (azblob://). Open makes one. It is
// safe for concurrent use.
type Bucket struct {
	b      *gcblob.Bucket
	s3     *s3.Client // S3 only: multipart uploads (aborts, WalkTemps, RemoveTemp)
	bucket string
	prefix string // prepended to every key
	scheme string
	opts   Options
}

// Signer is what a store that can hand out presigned GET URLs implements (*Bucket).
type Signer interface {
	SignedURL(ctx context.Context, key string, ttl time.Duration) (string, error)
	SignedURLWith(ctx context.Context, key string, ttl time.Duration, so SignOptions) (string, error)
}

var (
	_ Store  = (*Bucket)(nil)
	_ Walker = (*Bucket)(nil)
	_ Signer = (*Bucket)(nil)
)

// String names the bucket, e.g. "s3://upsize/prefix/" (no endpoint, no credentials).
func (s *Bucket) String() string { return s.scheme + "://" + s.bucket + "/" + s.prefix }

// Close releases the bucket's resources.
func (s *Bucket) Close() error { return s.b.Close() }

// Check reports an error unless the bucket exists and the credentials may use it: a readiness check,
// and a clear message at start-up for a wrong bucket name or credentials.
func (s *Bucket) Check(ctx context.Context) error {
	ok, err := s.b.IsAccessible(ctx)
	if err != nil {
		return fmt.Errorf("blob: %s: %w", s, err)
	}
	if !ok {
		return fmt.Errorf("blob: %s: the bucket does not exist", s)
	}
	return nil
}

func (s *Bucket) objectKey(key string) (string, error) {
	if !keyPattern.MatchString(key) {
		return "", fmt.Errorf("blob: invalid key %q", key)
	}
	return s.prefix + key, nil
}

func (s *Bucket) err(op, key string, err error) error {
	return fmt.Errorf("blob: %s %s%s: %w", op, s, key, err)
}

// Put streams what write writes to the object store: readers see the previous object (or none) until
// the write completes, then the whole new one. Memory is bounded whatever the size (package
// documentation). A failed write, or one whose ctx ends, leaves no object and no multipart upload
// (unless the server does not answer within abortGrace: the janitor then removes the upload).
func (s *Bucket) Put(ctx context.Context, key string, write func(io.Writer) error) (Info, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	// The transfer manager reads from a pipe. To give up, Put fails the pipe: the manager then lets
	// the parts in flight finish and aborts the upload. Canceling parts in flight instead can let the
	// server store one after the abort, which brings the upload back (S3 says so: an abort may have to
	// be repeated). Only a server that keeps the parts longer than abortGrace has its requests
	// canceled (wctx), without ctx's deadline so that the manager's own abort can still be sent.
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := s.b.Upload(wctx, k, pr, &gcblob.WriterOptions{
			ContentType:    "application/octet-stream",
			BufferSize:     s.opts.PartSize,
			MaxConcurrency: s.opts.Concurrency,
		})
		pr.CloseWithError(err) // a failed upload fails the callback's next write
		done <- err
	}()
	var giveUp sync.Once
	fail := func(err error) {
		giveUp.Do(func() {
			pw.CloseWithError(err)
			time.AfterFunc(abortGrace, cancel)
		})
	}
	defer context.AfterFunc(ctx, func() { fail(ctx.Err()) })()

	sum := sha256.New()
	cw := &countWriter{w: &errWriter{w: io.MultiWriter(pw, sum)}}
	// Few, large writes into the pipe to the uploader, whatever the callback's write sizes.
	bw := bufio.NewWriterSize(cw, 256<<10)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if ew := cw.w.(*errWriter).err; err != nil && ew != nil && errors.Is(err, ew) {
		err = s.err("put", key, err) // the upload failed, not the callback
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		fail(err)
		if aerr := s.abortFailed(ctx, k, <-done); aerr != nil {
			err = fmt.Errorf("%w (%v)", err, aerr)
		}
		// The callback's error is the uploader's when the context ended: say why.
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("blob: put %s%s: %w: %v", s, key, cerr, err)
		}
		return Info{}, err
	}
	pw.Close()
	if err := <-done; err != nil {
		err = s.err("put", key, err)
		if aerr := s.abortFailed(ctx, k, err); aerr != nil {
			err = fmt.Errorf("%w (%v)", err, aerr)
		}
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w: %v", cerr, err)
		}
		return Info{}, err
	}
	return Info{Size: cw.n, SHA256: hex.EncodeToString(sum.Sum(nil))}, nil
}

// errWriter remembers the first error of w.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil && e.err == nil {
		e.err = err
	}
	return n, err
}

// abortFailed aborts the multipart upload of a failed Put, if there is one. The transfer manager aborts
// it itself, unless its requests were canceled (abortGrace) or its abort failed.
func (s *Bucket) abortFailed(ctx context.Context, k string, err error) error {
	var mu transfermanager.MultipartUploadError
	if s.s3 == nil || err == nil || !errors.As(err, &mu) || mu.UploadID() == "" {
		return nil
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	_, aerr := s.s3.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
		Bucket: aws.String(s.bucket), Key: aws.String(k), UploadId: aws.String(mu.UploadID()),
	})
	if aerr == nil || noSuchUpload(aerr) {
		return nil
	}
	return fmt.Errorf("aborting multipart upload %s failed, the janitor will: %v", mu.UploadID(), aerr)
}

// noSuchUpload: the multipart upload is gone (completed or aborted).
func noSuchUpload(err error) bool {
	var nsu *types.NoSuchUpload
	var ae smithy.APIError
	var re interface{ HTTPStatusCode() int }
	return errors.As(err, &nsu) ||
		errors.As(err, &ae) && ae.ErrorCode() == "NoSuchUpload" ||
		errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound
}

// Open reads the object's attributes (one HEAD); its bytes are read lazily, by ranged GETs (package
// documentation). The object reads with ctx.
func (s *Bucket) Open(ctx context.Context, key string) (Object, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return nil, err
	}
	a, err := s.b.Attributes(ctx, k)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, s.err("open", key, err)
	}
	return &bucketObject{ctx: ctx, s: s, name: key, key: k, size: a.Size, mod: a.ModTime, etag: a.ETag,
		window: s.opts.readWindow}, nil
}

// Delete removes the object; a missing one is not an error.
func (s *Bucket) Delete(ctx context.Context, key string) error {
	k, err := s.objectKey(key)
	if err != nil {
		return err
	}
	if err := s.b.Delete(ctx, k); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return s.err("delete", key, err)
	}
	return nil
}

// SignOptions set the headers of the answer to a presigned GET (S3 only).
type SignOptions struct {
	ContentType        string
	ContentDisposition string
	CacheControl       string
}

// SignedURL returns a presigned URL that GETs the object for ttl (at most 7 days on S3), without
// credentials: a client can be redirected to it. No request is made (the object may not exist).
func (s *Bucket) SignedURL(ctx context.Context, key string, ttl time.Duration) (string, error) {
	return s.SignedURLWith(ctx, key, ttl, SignOptions{})
}

// SignedURLWith is SignedURL with the answer's headers set (e.g. the image's Content-Type: objects are
// stored as application/octet-stream).
func (s *Bucket) SignedURLWith(ctx context.Context, key string, ttl time.Duration, so SignOptions) (string, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return "", err
	}
	if ttl <= 0 {
		return "", fmt.Errorf("blob: signed URL lifetime %s", ttl)
	}
	opts := &gcblob.SignedURLOptions{Expiry: ttl, Method: http.MethodGet}
	if so != (SignOptions{}) {
		opts.BeforeSign = func(as func(any) bool) error {
			var in *s3.GetObjectInput
			if !as(&in) {
				return fmt.Errorf("headers of a signed URL's answer are for S3 only")
			}
			set := func(p **string, v string) {
				if v != "" {
					*p = aws.String(v)
				}
			}
			set(&in.ResponseContentType, so.ContentType)
			set(&in.ResponseContentDisposition, so.ContentDisposition)
			set(&in.ResponseCacheControl, so.CacheControl)
			return nil
		}
	}
	u, err := s.b.SignedURL(ctx, k, opts)
	if err != nil {
		return "", s.err("sign", key, err)
	}
	return u, nil
}

// bucketObject reads an object by windows: one ranged GET from the current position for at most
// window bytes, the window doubling (up to readWindowMax) while reads go on without a Seek.
type bucketObject struct {
	ctx       context.Context
	s         *Bucket
	name, key string // the caller's key, and the object's
	size      int64
	mod       time.Time
	etag      string
	off       int64          // position of the next Read
	r         *gcblob.Reader // the open window, or nil
	end       int64          // where r's window ends
	window    int64          // length of the next window
	closed    bool
}

func (o *bucketObject) Size() int64        { return o.size }
func (o *bucketObject) ModTime() time.Time { return o.mod }

func (o *bucketObject) Read(p []byte) (int, error) {
	if o.closed {
		return 0, os.ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if o.off >= o.size {
			o.drop()
			return 0, io.EOF
		}
		if o.r == nil {
			n := min(o.window, o.size-o.off)
			r, err := o.s.b.NewRangeReader(o.ctx, o.key, o.off, n, o.readerOptions())
			if err != nil {
				return 0, o.readErr(err)
			}
			o.r, o.end = r, o.off+n
			o.window = min(2*o.window, readWindowMax)
		}
		n, err := o.r.Read(p)
		o.off += int64(n)
		switch {
		case err == io.EOF:
			o.drop()
			if o.off < o.end {
				return n, fmt.Errorf("blob: %s%s: %w", o.s, o.name, io.ErrUnexpectedEOF)
			}
			if n == 0 {
				continue // the next window
			}
			return n, nil
		case err != nil:
			o.drop()
			return n, o.readErr(err)
		}
		return n, nil
	}
}

func (o *bucketObject) readErr(err error) error {
	if gcerrors.Code(err) == gcerrors.FailedPrecondition {
		return fmt.Errorf("blob: %s%s changed while it was read: %w", o.s, o.name, err)
	}
	return o.s.err("read", o.name, err)
}

// readerOptions makes the GETs conditional on the ETag read by Open (S3): a rewritten object fails the
// read (412) rather than mixing versions.
func (o *bucketObject) readerOptions() *gcblob.ReaderOptions {
	if o.etag == "" {
		return nil
	}
	return &gcblob.ReaderOptions{BeforeRead: func(as func(any) bool) error {
		var in *s3.GetObjectInput
		if as(&in) {
			in.IfMatch = aws.String(o.etag)
		}
		return nil
	}}
}

func (o *bucketObject) Seek(offset int64, whence int) (int64, error) {
	if o.closed {
		return 0, os.ErrClosed
	}
	var at int64
	switch whence {
	case io.SeekStart:
		at = offset
	case io.SeekCurrent:
		at = o.off + offset
	case io.SeekEnd:
		at = o.size + offset
	default:
		return 0, fmt.Errorf("blob: Seek: invalid whence %d", whence)
	}
	if at < 0 {
		return 0, fmt.Errorf("blob: Seek: negative position %d", at)
	}
	if at != o.off {
		o.drop()
		o.window = o.s.opts.readWindow
	}
	o.off = at
	return at, nil
}

func (o *bucketObject) Close() error {
	o.closed = true
	o.drop()
	return nil
}

func (o *bucketObject) drop() {
	if o.r != nil {
		o.r.Close()
		o.r = nil
	}
}
