package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/redis/go-redis/v9"

	"upsize/internal/jobs"
)

// sample is one look at the service's queues.
type sample struct {
	At      time.Time `json:"at"`
	Backlog int64     `json:"backlog"` // pending + active tasks over every queue
	Open    int       `json:"open"`    // the run's requests without an outcome yet
}

// sampleBacklog looks at the backlog every -sample-interval until the attack is over (done is closed)
// and the backlog has drained, -drain-timeout has passed since the last request, or the run stops.
func sampleBacklog(ctx context.Context, cfg *config, rdb redis.UniversalClient, rec *recorder, done <-chan struct{}, log io.Writer) []sample {
	tick := time.NewTicker(cfg.SampleInterval)
	defer tick.Stop()
	var samples []sample
	for {
		at, open, lastSent := rec.state()
		n, err := backlog(ctx, rdb)
		if err == nil {
			samples = append(samples, sample{At: at, Backlog: n, Open: open})
		} else if ctx.Err() == nil {
			fmt.Fprintf(log, "sample: %v\n", err)
		}
		drained := err == nil && n == 0 && open == 0
		if isClosed(done) && (drained || time.Since(lastSent) > cfg.DrainTimeout) {
			return samples
		}
		select {
		case <-ctx.Done():
			return samples
		case <-tick.C:
		}
	}
}

// backlog is what asynq holds for the workers: pending and active tasks of every queue, the same
// lists the service's own backlog check reads.
func backlog(ctx context.Context, rdb redis.UniversalClient) (int64, error) {
	pipe := rdb.Pipeline()
	var lens []*redis.IntCmd
	for _, q := range jobs.Queues {
		lens = append(lens, pipe.LLen(ctx, jobs.PendingKey(q)), pipe.LLen(ctx, jobs.ActiveKey(q)))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	var n int64
	for _, l := range lens {
		n += l.Val()
	}
	return n, nil
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
