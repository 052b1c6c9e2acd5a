package blob

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	gcblob "gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// Walk lists the bucket (under the prefix) a page at a time (1000 keys). Only what Open would find is
// an object: keys that are not valid keys, or lie in a "subdirectory" of the prefix, are not seen.
func (s *Bucket) Walk(ctx context.Context, fn func(Entry) error) error {
	it := s.b.List(&gcblob.ListOptions{Prefix: s.prefix, Delimiter: "/", BeforeList: s.beforeList})
	for {
		o, err := it.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return s.err("list", "", err)
		}
		key := strings.TrimPrefix(o.Key, s.prefix)
		if o.IsDir || !keyPattern.MatchString(key) {
			continue
		}
		if err := fn(Entry{Key: key, Size: o.Size, ModTime: o.ModTime}); err != nil {
			return err
		}
	}
}

func (s *Bucket) beforeList(as func(any) bool) error {
	var in *s3.ListObjectsV2Input
	if as(&in) {
		in.MaxKeys = aws.Int32(s.opts.listPage)
	}
	return nil
}

// WalkTemps lists the multipart uploads under the prefix that were begun and never completed or
// aborted: what a crash in the middle of a Put leaves (S3 keeps, and bills, their parts until they are
// aborted). Entry.Temp is the upload id, Entry.ModTime when the upload began, Entry.Size 0 (unknown
// without listing the parts). Other stores have no such leftovers: nothing is listed.
func (s *Bucket) WalkTemps(ctx context.Context, fn func(Entry) error) error {
	if s.s3 == nil {
		return nil
	}
	return s.listUploads(ctx, s.prefix, func(key, id string, began time.Time) error {
		return fn(Entry{Key: key, Temp: id, ModTime: began})
	})
}

// listUploads pages through ListMultipartUploads under prefix (p), for our keys only.
func (s *Bucket) listUploads(ctx context.Context, p string, fn func(key, id string, began time.Time) error) error {
	in := &s3.ListMultipartUploadsInput{Bucket: aws.String(s.bucket)}
	if p != "" {
		in.Prefix = aws.String(p)
	}
	pg := s3.NewListMultipartUploadsPaginator(s.s3, in, func(o *s3.ListMultipartUploadsPaginatorOptions) { o.Limit = s.opts.listPage })
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return s.err("list uploads", "", err)
		}
		for _, u := range page.Uploads {
			key, ok := strings.CutPrefix(aws.ToString(u.Key), s.prefix)
			if !ok || !keyPattern.MatchString(key) || aws.ToString(u.UploadId) == "" {
				continue // not ours to remove
			}
			if err := fn(key, aws.ToString(u.UploadId), aws.ToTime(u.Initiated)); err != nil {
				return err
			}
		}
	}
	return nil
}

// DeleteIfOlder deletes the object unless it was last written after cutoff (or is gone). As with FS,
// the check (HEAD) and the removal (DELETE) are two requests: an object rewritten between them would be
// lost, which is why the janitor's cutoff is far older than any write in progress. The object's time
// is the server's clock (Last-Modified, to the second): the janitor's grace covers any skew.
func (s *Bucket) DeleteIfOlder(ctx context.Context, key string, cutoff time.Time) (bool, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return false, err
	}
	a, err := s.b.Attributes(ctx, k)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return false, nil
	}
	if err != nil {
		return false, s.err("stat", key, err)
	}
	if a.ModTime.After(cutoff) {
		return false, nil
	}
	err = s.b.Delete(ctx, k)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return false, nil
	}
	if err != nil {
		return false, s.err("delete", key, err)
	}
	return true, nil
}

// RemoveTemp aborts the multipart upload t (from WalkTemps) unless it was begun, or had a part
// written, after cutoff; both are read from the server again rather than taken from t. An upload that
// is gone is not an error (false).
func (s *Bucket) RemoveTemp(ctx context.Context, t Entry, cutoff time.Time) (bool, error) {
	if s.s3 == nil {
		return false, fmt.Errorf("blob: %s has no unfinished writes to remove", s)
	}
	k, err := s.objectKey(t.Key)
	if err != nil || t.Temp == "" {
		return false, fmt.Errorf("blob: invalid temporary %q of %q", t.Temp, t.Key)
	}
	// When it began: listed again (a listing of this one key).
	var began time.Time
	found := false
	errFound := fmt.Errorf("found")
	err = s.listUploads(ctx, k, func(key, id string, b time.Time) error {
		if key == t.Key && id == t.Temp {
			began, found = b, true
			return errFound
		}
		return nil
	})
	if err != nil && err != errFound {
		return false, err
	}
	if !found || began.After(cutoff) {
		return false, nil
	}
	// When it was last written: its parts.
	pg := s3.NewListPartsPaginator(s.s3, &s3.ListPartsInput{
		Bucket: aws.String(s.bucket), Key: aws.String(k), UploadId: aws.String(t.Temp),
	})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if noSuchUpload(err) {
			return false, nil
		}
		if err != nil {
			return false, s.err("list parts", t.Key, err)
		}
		for _, p := range page.Parts {
			if aws.ToTime(p.LastModified).After(cutoff) {
				return false, nil
			}
		}
	}
	_, err = s.s3.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket: aws.String(s.bucket), Key: aws.String(k), UploadId: aws.String(t.Temp),
	})
	if noSuchUpload(err) {
		return false, nil
	}
	if err != nil {
		return false, s.err("abort upload", t.Key, err)
	}
	return true, nil
}
