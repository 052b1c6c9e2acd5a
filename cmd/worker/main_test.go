package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"upsize/internal/testredis"
)

// run is the whole binary: it starts on a free port, becomes ready, answers JSON everywhere, and stops
// cleanly when its context ends.
func TestRunWorksAndStops(t *testing.T) {
	rdb := testredis.Redis(t)
	env := map[string]string{
		"REDIS_URL": testredis.RedisURL(rdb), "HTTP_ADDR": "127.0.0.1:0", "BLOB_DIR": t.TempDir(),
		"WORKER_CONCURRENCY": "1", "SHUTDOWN_TIMEOUT": "2s",
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	out, logs := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, logs); logs.Close() }()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == "working" {
				addr <- line["addr"].(string)
			}
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case err := <-done:
		t.Fatalf("run returned at start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no working line")
	}
	for path, want := range map[string]int{"/readyz": 200, "/healthz": 200, "/nothing": 404} {
		res, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		err = json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if res.StatusCode != want || err != nil || res.Header.Get("Content-Type") != "application/json" {
			t.Errorf("GET %s: %d %v (%v)", path, res.StatusCode, body, err)
		}
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
}
