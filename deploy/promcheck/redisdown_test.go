package promcheck

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"upsize/internal/jobs"
	"upsize/internal/metrics"
	"upsize/internal/obs"
)

// What UpsizeRedisUnreachable relies on, with the service's own code and a Redis that refuses
// connections: the API's /metrics, served as cmd/api serves it, answers 500 (so Prometheus records
// up == 0 for every API target and no series of it at all, upsize_queue_tasks included); a worker's
// asynq, as cmd/worker configures it, keeps asking its pool for connections, which counts misses and
// never a hit.
func TestRedisDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connections are refused, as when Redis is down
	dead := func() *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 100 * time.Millisecond})
		t.Cleanup(func() { c.Close() })
		return c
	}

	t.Run("the API's scrape fails", func(t *testing.T) {
		reg := obs.NewRegistry()
		metrics.NewAPI(reg, dead(), jobs.Queues, jobs.PendingKey, jobs.ActiveKey)
		srv := httptest.NewServer(obs.Handler(reg))
		defer srv.Close()
		res, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusInternalServerError {
			t.Fatalf("/metrics answered %d with Redis down, not 500: UpsizeRedisUnreachable and UpsizeAPIDown "+
				"assume the scrape fails (up == 0); with partial answers, alert on absent(upsize_queue_tasks) "+
				"and up == 1 instead.\n%.300s", res.StatusCode, body)
		}
	})

	t.Run("the worker's pool misses and never hits", func(t *testing.T) {
		rdb := dead()
		reg := obs.NewRegistry()
		metrics.NewWorker(reg, rdb)
		mux := asynq.NewServeMux()
		mux.HandleFunc(jobs.TypeUpsize, func(context.Context, *asynq.Task) error { return nil })
		srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
			Concurrency: 2, Queues: jobs.QueueWeights, TaskCheckInterval: 4 * time.Millisecond,
			ShutdownTimeout: time.Second, LogLevel: asynq.FatalLevel,
			Logger: obs.AsynqLogger{L: slog.New(slog.DiscardHandler)},
		})
		if err := srv.Start(mux); err != nil {
			t.Fatal(err)
		}
		defer srv.Shutdown()
		var hits, misses float64
		deadline := time.Now().Add(15 * time.Second)
		for misses < 3 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			hits, misses = counter(t, reg.Gather, "upsize_redis_pool_hits_total"), counter(t, reg.Gather, "upsize_redis_pool_misses_total")
		}
		if hits != 0 || misses < 3 {
			t.Fatalf("with Redis down a worker's pool counted %v hits and %v misses; UpsizeRedisUnreachable expects no hit and misses going on", hits, misses)
		}
	})
}

func counter(t *testing.T, gather func() ([]*dto.MetricFamily, error), name string) float64 {
	t.Helper()
	mfs, err := gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("%s is not exposed", name)
	return 0
}
