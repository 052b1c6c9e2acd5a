package tests3

import (
	"context"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Each call makes a fresh, empty bucket, usable with the credentials set into the environment; the
// bucket is gone, with what it held, when its test ends.
func TestBucketIsFreshAndRemoved(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("use", func(t *testing.T) {
		raw := Bucket(t)
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		name = u.Host
		if q := u.Query(); q.Get("endpoint") != "http://"+Addr() || q.Get("region") != Region || q.Get("use_path_style") != "true" {
			t.Errorf("URL %s", raw)
		}
		if !strings.HasPrefix(name, "t-testbucketisfreshandremoved-use-") || len(name) > 63 {
			t.Errorf("bucket name %q", name)
		}
		if other := Bucket(t); other == raw {
			t.Error("two calls, one bucket")
		}
		c := Client(Addr())
		ctx := context.Background()
		out, err := c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &name})
		if err != nil || len(out.Contents) != 0 {
			t.Fatalf("new bucket: %v, %d objects", err, len(out.Contents))
		}
		if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &name, Key: aws.String("a/b"), Body: strings.NewReader("x")}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &name, Key: aws.String("c")}); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := Client(Addr()).HeadBucket(context.Background(), &s3.HeadBucketInput{Bucket: &name}); err == nil {
		t.Fatalf("bucket %s outlived its test", name)
	}
}

// A server of the test's own answers, and is gone once killed.
func TestStartServer(t *testing.T) {
	t.Parallel()
	s := StartServer(t)
	ctx := context.Background()
	c := Client(s.Addr)
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("bucket-1")}); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	if _, err := c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String("bucket-1")}); err == nil {
		t.Fatal("the killed server answers")
	}
	s.Kill() // twice is fine
}

// No server: the test fails (it is not skipped), naming the script that starts one.
func TestNoServerFailsNamingTheScript(t *testing.T) {
	if os.Getenv("TESTS3_CHILD") == "1" {
		Bucket(t)
		return
	}
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestNoServerFailsNamingTheScript$", "-test.v")
	cmd.Env = append(os.Environ(), "TESTS3_CHILD=1", "TEST_S3_ADDR="+closed)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--- FAIL") || strings.Contains(string(out), "SKIP") ||
		!strings.Contains(string(out), "scripts/s3-local.sh") {
		t.Fatalf("without a server: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
