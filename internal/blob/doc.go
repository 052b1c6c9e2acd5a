// Package blob stores image bytes. Metadata lives in Redis; bytes live here, behind a small interface
// (Store, and Walker for the janitor) with two implementations: FS, files on a local or shared
// filesystem, and Bucket, an object store through gocloud.dev/blob (S3 and S3-compatible servers; also
// Google Cloud Storage and Azure Blob Storage, which the library gives alike, in a build with
// -tags blob_clouds: they double what a binary links).
//
// # BLOB_URL
//
// Open picks the implementation from a URL:
//
//	file:///abs/path        FS in /abs/path (created if missing)
//	file://./rel/path       FS in rel/path, relative to the working directory (also file://../x)
//	s3://BUCKET?PARAMS      Bucket on S3 or any S3-compatible server (versitygw, MinIO, Ceph, R2, …)
//	gs://BUCKET             Bucket on Google Cloud Storage (Application Default Credentials)  [blob_clouds]
//	azblob://CONTAINER      Bucket on Azure Blob Storage (AZURE_STORAGE_ACCOUNT, …, azidentity) [blob_clouds]
//
// A file URL takes no query, and no host other than "." or ".." (or "localhost", RFC 8089).
//
// An S3-compatible server on a private address, as the tests and scripts/s3-local.sh use it:
//
//	s3://upsize?endpoint=http://127.0.0.1:7070&region=us-east-1&use_path_style=true
//
// and AWS itself:
//
//	s3://my-bucket?region=eu-west-1
//
// Credentials are never in the URL (a URL with user info is refused): the AWS SDK's default chain finds
// them, i.e. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), a shared profile
// (AWS_PROFILE, or ?profile=), web identity (EKS IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE),
// ECS task roles, EC2 instance profiles. A region is required: ?region= or AWS_REGION.
//
// The query parameters of an s3 URL are those of gocloud.dev v0.47's s3blob.URLOpener, with the same
// meaning (they are parsed by gocloud.dev/aws.V2ConfigFromURLParams, and the s3-specific ones here):
//
//	region=R                               the region (signing region for other servers)
//	endpoint=URL                           another server than AWS: http://host:port or https://…
//	use_path_style=true                    http://host/bucket/key rather than http://bucket.host/key; the
//	                                       usual choice for S3-compatible servers (also s3ForcePathStyle=true)
//	disable_https=true                     plain HTTP to AWS endpoints (not needed with endpoint=http://…)
//	hostname_immutable=true                do not prefix the endpoint's host with the bucket
//	profile=P                              shared config profile
//	role=arn:aws:iam::…                    assume this role (STS) with the credentials found
//	anonymous=true                         unsigned requests (public buckets)
//	dualstack=true, fips=true, accelerate=true
//	ssetype=AES256|aws:kms|aws:kms:dsse    server-side encryption of written objects (and kmskeyid=ID)
//	rate_limiter_capacity=N                retry token bucket (default: no client-side limit on retries)
//	request_checksum_calculation=when_supported|when_required
//	response_checksum_validation=when_supported|when_required
//	                                       when_required for servers that reject the SDK's CRC checksums
//	prefix=P                               keep every object under P (e.g. prefix=upsize/), so that one
//	                                       bucket can be shared; the janitor then only sees P's objects
//
// An unknown parameter is an error. gocloud's key= parameter (a single-object bucket) is refused. gs and
// azblob URLs take the parameters of gcsblob and azureblob, and prefix= as above.
//
// # Object stores
//
// Put streams: what the write callback writes goes through a 256 KiB buffer into an io.Pipe to the AWS
// SDK's transfer manager, which sends a single PutObject below 16 MiB and otherwise a multipart upload of
// PartSize parts (8 MiB), Concurrency (2) at a time. Nothing is held whole: memory per Put is bounded by
// the transfer manager's buffers, up to 16 MiB for the first part (it reads up to its 16 MiB multipart
// threshold before deciding) plus Concurrency+1 part buffers of PartSize, about 40 MiB with the defaults
// whatever the object's size, so a worker needs about WORKER_CONCURRENCY × 40 MiB for its writes.
// Measured for a 176 MiB Put (TestStreamedPutMemory): live heap +24 to +51 MiB, peak heap with
// uncollected garbage +43 to +77 MiB, RSS +45 MiB without the race detector. SHA-256 and size are
// computed as the bytes pass. A write whose callback fails, or whose context ends, is aborted: the pipe
// to the transfer manager fails, so no PutObject or CompleteMultipartUpload is sent; the manager lets the
// parts in flight finish and then aborts an upload already begun. Parts are not canceled mid-request:
// S3 may store a part that was in flight after the abort, which brings the upload back (seen with
// versitygw in TestStoreFailedPutLeavesNothing). A server that does not finish them within 2 s has its
// requests canceled, and the upload is aborted once more under a fresh 30 s context. What a crash
// leaves (an upload never completed or aborted) is listed by WalkTemps
// and removed by the janitor (RemoveTemp); a bucket lifecycle rule AbortIncompleteMultipartUpload does
// the same. A Put whose context ends while the server completes the upload may report an error for an
// object that was written: it has no record, and the janitor removes it as an orphan.
//
// Open reads the object's attributes (one HEAD: size, last-modified, ETag); reading is lazy, by ranged
// GETs of a window that starts at 4 MiB and doubles up to 64 MiB while reading goes on sequentially, so
// http.ServeContent answers HEAD without a GET and a Range request with a GET of at most the window from
// the range's start. The GETs carry If-Match with the ETag of the HEAD: an object rewritten while it is
// read fails the read rather than mixing two versions.
//
// Transient errors are retried by the SDK's standard retryer (exponential backoff with jitter, at most
// MaxAttempts attempts, backoff capped at MaxBackoff); every request honours its context. A server that
// does not answer fails a request after DialTimeout (connecting) or ResponseHeaderTimeout (waiting for
// an answer), per attempt.
package blob
