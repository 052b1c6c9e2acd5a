// Package tests3 gives each test a bucket of its own on a real S3 server, created empty and emptied and
// deleted when the test ends, so tests can run twice in a row and in parallel. The server is the one at
// $TEST_S3_ADDR (default 127.0.0.1:7070), started by scripts/s3-local.sh (versitygw); its credentials are
// the fixed test ones below, or $TEST_S3_ACCESS_KEY and $TEST_S3_SECRET_KEY. It imports nothing of the
// repo.
//
// A BLOB_URL carries no credentials: the first call (SetEnv) clears the test process's AWS_* variables
// and sets AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to the test server's, once, with os.Setenv, since
// t.Setenv cannot be used by parallel tests. Only the test process is affected.
package tests3

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// The credentials scripts/s3-local.sh starts versitygw with.
const (
	AccessKey = "upsize-test"
	SecretKey = "upsize-test-secret"
	Region    = "us-east-1"
)

// Addr is where tests find the S3 server: $TEST_S3_ADDR or 127.0.0.1:7070.
func Addr() string {
	if a := os.Getenv("TEST_S3_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:7070"
}

func accessKey() string { return envOr("TEST_S3_ACCESS_KEY", AccessKey) }
func secretKey() string { return envOr("TEST_S3_SECRET_KEY", SecretKey) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// URL is the BLOB_URL of bucket on the server at addr.
func URL(addr, bucket string) string {
	return fmt.Sprintf("s3://%s?endpoint=http://%s&region=%s&use_path_style=true", bucket, addr, Region)
}

var envOnce sync.Once

// SetEnv points the AWS SDK's default credential chain of this process at the test server's
// credentials (once; Bucket calls it).
func SetEnv() {
	envOnce.Do(func() {
		// Hermetic: nothing of the developer's AWS set-up (profile, region, endpoint, session token)
		// applies to the test process, and no EC2 metadata service is asked for anything.
		for _, kv := range os.Environ() {
			if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "AWS_") {
				os.Unsetenv(k)
			}
		}
		os.Setenv("AWS_ACCESS_KEY_ID", accessKey())
		os.Setenv("AWS_SECRET_ACCESS_KEY", secretKey())
		os.Setenv("AWS_CONFIG_FILE", os.DevNull)
		os.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
		os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	})
}

// Client is an S3 client of the server at addr, for tests to look at a bucket behind the store's back
// (e.g. its multipart uploads).
func Client(addr string) *s3.Client {
	return s3.New(s3.Options{
		Region:       Region,
		BaseEndpoint: aws.String("http://" + addr),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(accessKey(), secretKey(), ""),
		HTTPClient:   &http.Client{Timeout: 60 * time.Second},
		// Tests want an answer, not retries that hide a dead server.
		RetryMaxAttempts: 1,
	})
}

// Bucket creates a bucket of the test's own on the server at Addr and returns its BLOB_URL; the bucket
// is emptied (objects and multipart uploads) and deleted when the test ends. No server: the test fails,
// saying how to start one.
func Bucket(t testing.TB) string {
	t.Helper()
	return BucketAt(t, Addr())
}

// BucketAt is Bucket on the server at addr.
func BucketAt(t testing.TB, addr string) string {
	t.Helper()
	SetEnv()
	c := Client(addr)
	name := bucketName(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("S3 server at %s: creating bucket %s: %v (start one with scripts/s3-local.sh, or set TEST_S3_ADDR)", addr, name, err)
	}
	t.Cleanup(func() {
		if err := Remove(context.Background(), c, name); err != nil {
			t.Errorf("removing test bucket %s: %v", name, err)
		}
	})
	return URL(addr, name)
}

// bucketName: lower case letters, digits and dashes, 3-63 characters, unique.
func bucketName(t testing.TB) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	if len(name) > 40 {
		name = strings.Trim(name[:40], "-")
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	return "t-" + name + "-" + hex.EncodeToString(rnd[:])
}

// Remove aborts every multipart upload of the bucket, deletes every object, then the bucket.
func Remove(ctx context.Context, c *s3.Client, bucket string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	ups := s3.NewListMultipartUploadsPaginator(c, &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	for ups.HasMorePages() {
		page, err := ups.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("listing uploads: %w", err)
		}
		for _, u := range page.Uploads {
			if _, err := c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
				Bucket: aws.String(bucket), Key: u.Key, UploadId: u.UploadId,
			}); err != nil {
				return fmt.Errorf("aborting upload of %s: %w", aws.ToString(u.Key), err)
			}
		}
	}
	objs := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	for objs.HasMorePages() {
		page, err := objs.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("listing objects: %w", err)
		}
		for _, o := range page.Contents {
			if _, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: o.Key}); err != nil {
				return fmt.Errorf("deleting %s: %w", aws.ToString(o.Key), err)
			}
		}
	}
	_, err := c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(bucket)})
	var nsb *types.NoSuchBucket
	if errors.As(err, &nsb) {
		return nil
	}
	return err
}

// Server is a versitygw of the test's own (StartServer), which a test may kill, restart on the same
// port and data, or pause (a server that accepts connections and answers nothing: a slow store).
type Server struct {
	Addr string
	t    testing.TB
	data string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartServer starts a versitygw of the test's own on a free port of 127.0.0.1, with a fresh data
// directory, for tests that stop the server (Kill); it is killed when the test ends. The binary is
// looked up as scripts/s3-local.sh does (PATH, var/bin of the repo, $(go env GOPATH)/bin); missing, the
// test fails, saying scripts/s3-local.sh installs it.
func StartServer(t testing.TB) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := &Server{Addr: addr, t: t, data: t.TempDir()}
	t.Cleanup(s.Kill)
	s.Restart()
	return s
}

// Restart starts the server again on its port and data (after Kill), and waits until it answers.
func (s *Server) Restart() {
	t := s.t
	t.Helper()
	bin := versitygw()
	if bin == "" {
		t.Fatal("versitygw not found on PATH, in var/bin or in $(go env GOPATH)/bin: run scripts/s3-local.sh, which installs it")
	}
	s.cmd = exec.Command(bin, "--port", s.Addr, "--access", accessKey(), "--secret", secretKey(),
		"--region", Region, "--keep-alive", "--quiet", "posix", s.data)
	log, err := os.CreateTemp(t.TempDir(), "versitygw-*.log")
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	s.done = done
	cmd := s.cmd
	go func() { cmd.Wait(); log.Close(); close(done) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			b, _ := os.ReadFile(log.Name())
			t.Fatalf("versitygw on %s exited: %s", s.Addr, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw did not answer on %s within 10 s", s.Addr)
		}
	}
}

// Kill stops the server at once (SIGKILL) and waits for it to be gone.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGCONT) // a paused one too
	s.cmd.Process.Kill()
	<-s.done
}

// Pause stops the server's process (SIGSTOP): connections are still accepted by the kernel, nothing is
// answered. Resume lets it go on.
func (s *Server) Pause()  { s.cmd.Process.Signal(syscall.SIGSTOP) }
func (s *Server) Resume() { s.cmd.Process.Signal(syscall.SIGCONT) }

// versitygw finds the binary as scripts/s3-local.sh does.
func versitygw() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	var dirs []string
	if root := repoRoot(); root != "" {
		dirs = append(dirs, filepath.Join(root, "var", "bin"))
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, p := range filepath.SplitList(strings.TrimSpace(string(out))) {
			dirs = append(dirs, filepath.Join(p, "bin"))
		}
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// repoRoot is the nearest directory above the working directory (a test's: its package's) with a go.mod.
func repoRoot() string {
	d, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		up := filepath.Dir(d)
		if up == d {
			return ""
		}
		d = up
	}
}
