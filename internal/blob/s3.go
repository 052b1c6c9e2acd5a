package blob

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	gcaws "gocloud.dev/aws"
	"gocloud.dev/blob/s3blob"
)

// openS3 opens an s3:// URL as gocloud.dev v0.47's s3blob.URLOpener does (same parameters, same
// meaning), but builds the client itself so as to set the HTTP timeouts and the retryer's bounds, which
// the URL opener does not let one set.
func openS3(ctx context.Context, u *url.URL, o Options) (*Bucket, error) {
	bucket := u.Host
	switch {
	case u.Opaque != "" || bucket == "":
		return nil, fmt.Errorf("no bucket: write s3://BUCKET?region=…")
	case u.User != nil:
		return nil, fmt.Errorf("credentials do not go in the URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use the SDK's default chain (profile, web identity, instance role)")
	case strings.Contains(bucket, ":"):
		return nil, fmt.Errorf("bucket %q: a server's address goes in endpoint=http://host:port", bucket)
	case u.Path != "" && u.Path != "/":
		return nil, fmt.Errorf("path %q: to keep the objects under a prefix, write ?prefix=%s/", u.Path, strings.Trim(u.Path, "/"))
	}
	q := u.Query()
	prefix, err := takePrefix(q)
	if err != nil {
		return nil, err
	}
	take := func(key string) (string, bool) {
		v, ok := q.Get(key), q.Has(key)
		q.Del(key)
		return v, ok
	}
	parseBool := func(key, v string) (bool, error) {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("invalid value for %q: %q", key, v)
		}
		return b, nil
	}

	// The s3-specific parameters, as s3blob.URLOpener.OpenBucketURL reads them.
	var bopts s3blob.Options
	var copts []func(*s3.Options)
	if v, ok := take("ssetype"); ok {
		for _, t := range types.ServerSideEncryptionAes256.Values() {
			if strings.EqualFold(string(t), v) {
				bopts.EncryptionType = t
			}
		}
		if bopts.EncryptionType == "" {
			return nil, fmt.Errorf("invalid value for %q: %q", "ssetype", v)
		}
	}
	if v, ok := take("kmskeyid"); ok {
		bopts.KMSEncryptionID = v
	}
	if v, ok := take("accelerate"); ok {
		b, err := parseBool("accelerate", v)
		if err != nil {
			return nil, err
		}
		copts = append(copts, func(o *s3.Options) { o.UseAccelerate = b })
	}
	if v, ok := take("disable_https"); ok {
		b, err := parseBool("disable_https", v)
		if err != nil {
			return nil, err
		}
		copts = append(copts, func(o *s3.Options) { o.EndpointOptions.DisableHTTPS = b })
	}
	for _, key := range []string{"use_path_style", "s3ForcePathStyle"} {
		if v, ok := take(key); ok {
			b, err := parseBool(key, v)
			if err != nil {
				return nil, err
			}
			copts = append(copts, func(o *s3.Options) { o.UsePathStyle = b })
		}
	}
	if v, ok := q["endpoint"]; ok {
		if e, err := url.Parse(v[0]); err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
			return nil, fmt.Errorf("endpoint %q: want http://host:port or https://host", v[0])
		}
	}

	// The others (region, endpoint, profile, role, …) as gocloud reads them; it refuses unknown ones.
	cfg, err := gcaws.V2ConfigFromURLParams(ctx, q)
	if err != nil {
		return nil, err
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("no region: add region=… to the URL (us-east-1 for most S3-compatible servers) or set AWS_REGION")
	}
	cfg.HTTPClient = httpClient(o)
	// gocloud's retryer is the SDK's standard one (without the client-side retry quota unless
	// rate_limiter_capacity is given); bound its attempts and its backoff.
	standard := cfg.Retryer
	cfg.Retryer = func() aws.Retryer {
		return retry.AddWithMaxAttempts(retry.AddWithMaxBackoffDelay(standard(), o.MaxBackoff), o.MaxAttempts)
	}
	client := s3.NewFromConfig(cfg, copts...)
	// As s3blob.URLOpener does: the transfer manager does not take this from the client.
	bopts.RequestChecksumCalculation = cfg.RequestChecksumCalculation
	gb, err := s3blob.OpenBucket(ctx, client, bucket, &bopts)
	if err != nil {
		return nil, err
	}
	return &Bucket{b: gb, s3: client, bucket: bucket, prefix: prefix, scheme: "s3", opts: o}, nil
}

// httpClient bounds connecting and waiting for an answer; reading a body is bounded by the context.
func httpClient(o Options) aws.HTTPClient {
	bc := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = o.DialTimeout }).
		WithTransportOptions(func(t *http.Transport) {
			t.ResponseHeaderTimeout = o.ResponseHeaderTimeout
			t.MaxIdleConnsPerHost = 64
		})
	if o.transport != nil {
		return &http.Client{Transport: o.transport(bc.GetTransport())}
	}
	return bc
}

// takePrefix removes prefix= (ours) from q, and refuses gocloud's key= (a one-object bucket).
func takePrefix(q url.Values) (string, error) {
	if q.Has("key") {
		return "", fmt.Errorf("key= (a single-object bucket) is not a place to store images")
	}
	p := q.Get("prefix")
	q.Del("prefix")
	if strings.HasPrefix(p, "/") || strings.Contains(p, "..") || strings.ContainsFunc(p, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return "", fmt.Errorf("prefix %q: want a plain path such as upsize/ (no leading slash, no .., no control characters)", p)
	}
	return p, nil
}
