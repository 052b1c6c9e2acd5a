package metrics

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

func gauge(t *testing.T, reg *prometheus.Registry, name string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// With Redis down, a scrape still succeeds: upsize_redis_up says 0, the backlog is absent, and every
// other series is there.
func TestRedisDownDoesNotFailTheScrape(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused from now on, as when Redis is down
	dead := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	defer dead.Close()
	pending := func(q string) string { return "p:" + q }

	api := prometheus.NewRegistry()
	m := NewAPI(api, dead, Backlog{Queues: []string{"q"}, PendingKey: pending, ActiveKey: pending, WorkKey: "w", WorkDoneKey: "d"})
	m.HTTPInFlight.Set(3)
	if v, ok := gauge(t, api, "upsize_redis_up"); !ok || v != 0 {
		t.Fatalf("API upsize_redis_up = %v (present %v), want 0", v, ok)
	}
	if _, ok := gauge(t, api, "upsize_queue_tasks"); ok {
		t.Fatal("a backlog was reported without Redis")
	}
	if v, ok := gauge(t, api, "upsize_http_requests_in_flight"); !ok || v != 3 {
		t.Fatal("other series vanished with Redis down")
	}

	worker := prometheus.NewRegistry()
	NewWorker(worker, dead, 3)
	if v, ok := gauge(t, worker, "upsize_redis_up"); !ok || v != 0 {
		t.Fatalf("worker upsize_redis_up = %v, want 0", v)
	}
	if v, _ := gauge(t, worker, "upsize_worker_concurrency"); v != 3 {
		t.Fatalf("upsize_worker_concurrency = %v", v)
	}
}
