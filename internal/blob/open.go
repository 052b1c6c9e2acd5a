package blob

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"
)

// Options tunes the object stores that Open makes (FS has nothing to tune); zero values take the
// defaults below.
type Options struct {
	// PartSize is the size of a multipart upload's parts, and of each of the buffers a Put holds
	// (S3: at least 5 MiB). Default 8 MiB.
	PartSize int
	// Concurrency is how many parts of one Put are uploaded at once. Default 2.
	Concurrency int
	// MaxAttempts bounds the attempts of one request (the first one included) by the SDK's retryer.
	// Default 4.
	MaxAttempts int
	// MaxBackoff caps the retryer's wait between two attempts. Default 4 s.
	MaxBackoff time.Duration
	// DialTimeout bounds connecting to the server, per attempt. Default 5 s.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an answer once a request is sent, per attempt.
	// Default 60 s (a CompleteMultipartUpload of a large object can take a while on some servers).
	ResponseHeaderTimeout time.Duration

	// Tests only.
	transport  func(http.RoundTripper) http.RoundTripper // wraps the HTTP transport (S3)
	listPage   int32                                     // page size of listings (default 1000)
	readWindow int64                                     // first GET window of a read (default 4 MiB)
}

// Defaults of Options.
const (
	DefaultPartSize              = 8 << 20
	DefaultConcurrency           = 2
	DefaultMaxAttempts           = 4
	DefaultMaxBackoff            = 4 * time.Second
	DefaultDialTimeout           = 5 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
)

const (
	minPartSize   = 5 << 20 // S3's smallest part but the last
	readWindowMin = 4 << 20
	readWindowMax = 64 << 20
	// abortTimeout bounds the abort of a failed upload whose caller's context has ended.
	abortTimeout = 30 * time.Second
	// abortGrace is how long a failed Put waits for its parts in flight before it cancels them: up to
	// Concurrency parts of 8 MiB, well under a second on a healthy store.
	abortGrace = 2 * time.Second
)

func (o Options) withDefaults() Options {
	if o.PartSize <= 0 {
		o.PartSize = DefaultPartSize
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.ResponseHeaderTimeout <= 0 {
		o.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if o.listPage <= 0 {
		o.listPage = 1000
	}
	if o.readWindow <= 0 {
		o.readWindow = readWindowMin
	}
	return o
}

// Open opens the store that rawURL (BLOB_URL) names, with the default Options: *FS for a file URL,
// *Bucket for s3, gs and azblob (see the package documentation for the forms). Both also implement
// Walker. Open makes no request: a missing bucket or wrong credentials show at the first operation, or
// at (*Bucket).Check.
func Open(ctx context.Context, rawURL string) (Store, error) {
	return OpenWith(ctx, rawURL, Options{})
}

// OpenWith is Open with Options.
func OpenWith(ctx context.Context, rawURL string, o Options) (Store, error) {
	u, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	o = o.withDefaults()
	switch u.Scheme {
	case "file":
		dir, err := fileDir(u)
		if err != nil {
			return nil, fmt.Errorf("blob: BLOB_URL %q: %w", rawURL, err)
		}
		return NewFS(dir)
	case "s3":
		if o.PartSize < minPartSize {
			return nil, fmt.Errorf("blob: part size %d is below S3's minimum of %d", o.PartSize, minPartSize)
		}
		b, err := openS3(ctx, u, o)
		if err != nil {
			return nil, fmt.Errorf("blob: BLOB_URL %q: %w", redact(u), err)
		}
		return b, nil
	default:
		if cloudSchemes[u.Scheme] && !genericSchemes[u.Scheme] {
			return nil, fmt.Errorf("blob: BLOB_URL %q: %s:// is not built into this binary (build with -tags blob_clouds)", redact(u), u.Scheme)
		}
		if !genericSchemes[u.Scheme] {
			return nil, fmt.Errorf("blob: BLOB_URL %q: unknown scheme %q (want file, s3%s)", redact(u), u.Scheme, genericList())
		}
		b, err := openGeneric(ctx, u, o)
		if err != nil {
			return nil, fmt.Errorf("blob: BLOB_URL %q: %w", redact(u), err)
		}
		return b, nil
	}
}

func parseURL(rawURL string) (*url.URL, error) {
	if strings.TrimSpace(rawURL) == "" {
		return nil, fmt.Errorf("blob: BLOB_URL is empty (want file:///path, file://./rel or s3://bucket?…)")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse's error quotes the URL; it holds no credentials worth hiding that we would accept.
		return nil, fmt.Errorf("blob: BLOB_URL: %w", err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("blob: BLOB_URL %q has no scheme (want file:///path, file://./rel or s3://bucket?…)", rawURL)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("blob: BLOB_URL %q: a fragment (#…) means nothing here", redact(u))
	}
	return u, nil
}

// fileDir is the directory of a file URL: file:///abs, file://./rel, file://../rel, file://localhost/abs.
func fileDir(u *url.URL) (string, error) {
	if u.Opaque != "" {
		return "", fmt.Errorf("write file:///abs/path or file://./rel/path")
	}
	if u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("a file URL takes no query and no user")
	}
	var p string
	switch u.Host {
	case "", "localhost":
		p = u.Path
	case ".", "..":
		p = u.Host + u.Path
	default:
		return "", fmt.Errorf("host %q: write file:///abs/path or file://./rel/path", u.Host)
	}
	if p == "" || p == "/" {
		return "", fmt.Errorf("no directory: write file:///abs/path or file://./rel/path")
	}
	return filepath.Clean(filepath.FromSlash(p)), nil
}

// redact hides a password, should a URL carry one (it is refused anyway).
func redact(u *url.URL) string {
	return u.Redacted()
}
