package blob

import (
	"context"
	"net/url"
	"sort"
	"strings"

	gcblob "gocloud.dev/blob"
)

// genericSchemes are the object stores opened by gocloud's own URL openers: their parameters are
// theirs (see gocloud.dev/blob/gcsblob and azureblob), plus prefix= (ours). gs and azblob are built in
// with -tags blob_clouds (clouds.go).
var genericSchemes = map[string]bool{}

// cloudSchemes are known but maybe not built in.
var cloudSchemes = map[string]bool{"gs": true, "azblob": true}

func genericList() string {
	var s []string
	for k := range genericSchemes {
		s = append(s, k)
	}
	sort.Strings(s)
	if len(s) == 0 {
		return ""
	}
	return ", " + strings.Join(s, ", ")
}

// openGeneric opens a gs:// or azblob:// URL. These stores have no multipart uploads to list: an
// unfinished write leaves nothing that lasts (GCS resumable uploads and Azure uncommitted blocks
// expire by themselves), so WalkTemps finds nothing there.
func openGeneric(ctx context.Context, u *url.URL, o Options) (*Bucket, error) {
	c := *u
	q := c.Query()
	prefix, err := takePrefix(q)
	if err != nil {
		return nil, err
	}
	c.RawQuery = q.Encode()
	gb, err := gcblob.OpenBucket(ctx, c.String())
	if err != nil {
		return nil, err
	}
	return &Bucket{b: gb, bucket: u.Host, prefix: prefix, scheme: u.Scheme, opts: o}, nil
}
