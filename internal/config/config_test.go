package config

import (
	"slices"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaultsMatchSpec(t *testing.T) {
	c, err := Load("api", env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.RedisURL != "redis://127.0.0.1:6379/0" || c.HTTPAddr != ":8080" || c.BlobURL != "file://./var/blobs" ||
		c.UpsizeWaitTimeout != 60*time.Second || c.MaxInputPixels != 50000000 || c.MaxOutputPixels != 100000000 ||
		c.QueueMaxBacklog != 10000 || c.MaxUploadBytes != 33554432 || c.RequestTTL != 24*time.Hour || c.AdminToken != "" {
		t.Fatalf("defaults differ from SPEC.md: %+v", c)
	}
	// The settings beyond SPEC's: each read, with its documented default (README).
	if c.MaxQueuedPerUser != 100 || c.MaxTombstonesPerUser != 1000 || c.BodyTimeout != time.Minute ||
		c.UploadMemory != 128<<20 || c.ValidateMemory != 512<<20 || c.ValidateTimeout != 30*time.Second ||
		c.UploadWait != 5*time.Second || c.MaxConnections != 8192 || c.JanitorInterval != 10*time.Minute ||
		c.JanitorGrace != time.Hour || c.TaskRetryDelay != time.Second || c.RedisWaitReplicas != 0 ||
		c.RedisWaitTimeout != time.Second {
		t.Fatalf("defaults differ from the README: %+v", c)
	}
	set, err := Load("api", env(map[string]string{"UPLOAD_WAIT": "2s", "TASK_RETRY_DELAY": "3s", "REDIS_WAIT_REPLICAS": "1"}))
	if err != nil || set.UploadWait != 2*time.Second || set.TaskRetryDelay != 3*time.Second || set.RedisWaitReplicas != 1 {
		t.Fatalf("settings not read: %+v %v", set, err)
	}
	w, _ := Load("worker", env(nil))
	if w.HTTPAddr != ":9090" || w.WorkerConcurrency < 1 {
		t.Fatalf("worker defaults: %+v", w)
	}
}

func TestBadValuesAreRefused(t *testing.T) {
	for k, v := range map[string]string{
		"UPSIZE_WAIT_TIMEOUT": "soon", "MAX_INPUT_PIXELS": "-1", "WORKER_CONCURRENCY": "0", "REQUEST_TTL": "1s",
		"WORKER_POLL_INTERVAL": "10us",
	} {
		if _, err := Load("api", env(map[string]string{k: v})); err == nil {
			t.Errorf("%s=%q accepted", k, v)
		}
	}
}

func TestNamesCoverSpec(t *testing.T) {
	names := Names()
	for _, n := range []string{"REDIS_URL", "HTTP_ADDR", "ADMIN_TOKEN", "BLOB_URL", "WORKER_CONCURRENCY", "UPSIZE_WAIT_TIMEOUT",
		"MAX_INPUT_PIXELS", "MAX_OUTPUT_PIXELS", "QUEUE_MAX_BACKLOG", "MAX_UPLOAD_BYTES", "REQUEST_TTL"} {
		if !slices.Contains(names, n) {
			t.Errorf("Names() lacks %s", n)
		}
	}
}

func TestBlobURL(t *testing.T) {
	for in, want := range map[[2]string][2]string{
		{"", ""}:                     {"file://./var/blobs", "./var/blobs"},
		{"file:///srv/blobs", ""}:    {"file:///srv/blobs", "/srv/blobs"},
		{"file://./data", ""}:        {"file://./data", "./data"},
		{"", "/mnt/blobs"}:           {"file:///mnt/blobs", "/mnt/blobs"},
		{"s3://bucket?region=x", ""}: {"s3://bucket?region=x", ""},
		{"gs://bucket", ""}:          {"gs://bucket", ""},
	} {
		c, err := Load("api", env(map[string]string{"BLOB_URL": in[0], "BLOB_DIR": in[1]}))
		if err != nil || c.BlobURL != want[0] || c.BlobDir != want[1] {
			t.Errorf("BLOB_URL=%q BLOB_DIR=%q: %q %q %v; want %q %q", in[0], in[1], c.BlobURL, c.BlobDir, err, want[0], want[1])
		}
	}
	for _, bad := range [][2]string{{"file:///a", "/b"}, {"blobs", ""}, {"file://", ""}} {
		if _, err := Load("api", env(map[string]string{"BLOB_URL": bad[0], "BLOB_DIR": bad[1]})); err == nil {
			t.Errorf("BLOB_URL=%q BLOB_DIR=%q accepted", bad[0], bad[1])
		}
	}
}
