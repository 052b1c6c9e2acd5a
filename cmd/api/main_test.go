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

// run is the whole binary: it starts on a free port, serves, and stops cleanly when its context ends.
func TestRunServesAndStops(t *testing.T) {
	rdb := testredis.Redis(t)
	env := map[string]string{
		"REDIS_URL": testredis.RedisURL(rdb), "HTTP_ADDR": "127.0.0.1:0", "BLOB_DIR": t.TempDir(),
		"ADMIN_TOKEN": "t", "DRAIN_TIMEOUT": "2s",
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
			if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == "listening" {
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
		t.Fatal("no listening line")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get(base + "/readyz")
		if err == nil && res.StatusCode == 200 {
			res.Body.Close()
			break
		}
		if err == nil {
			res.Body.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	res, err := http.Get(base + "/api/images/1")
	if err != nil || res.StatusCode != 403 {
		t.Fatalf("unauthenticated call: %v %v", res, err)
	}
	res.Body.Close()
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
}
