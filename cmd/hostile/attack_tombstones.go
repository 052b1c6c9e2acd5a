package main

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"upsize/internal/redisconn"
	"upsize/internal/store"
)

// 6. A cancel of an id the service has never seen leaves a tombstone (so that the upsize following
// it answers 409). Without a bound, one key per cancel, each kept REQUEST_TTL (24 h): a cheap way to
// fill Redis. Now a user keeps at most MAX_TOMBSTONES_PER_USER of them, the oldest dropped first.
var tombstonesAttack = attack{
	name:   "tombstones",
	review: "20,000 cancels of fresh ids in 5 s left 20,000 keys, each kept 24 h",
	what: func(c *config) string {
		return fmt.Sprintf("%d cancels of fresh request ids by one user", c.scaled(20000, 2000))
	},
	needs: func(c *config) string {
		if c.RedisURL == "" {
			return "needs -redis to count the user's keys"
		}
		return ""
	},
	setup: setupTombstones,
	judge: func(e *env, r *result, m *memory) { peakWithin(r, m, 32<<20, "nothing kept in the API") },
}

func setupTombstones(ctx context.Context, e *env, r *result) (func(), error) {
	n := e.cfg.scaled(20000, 2000)
	rdb, err := redisconn.Open(e.cfg.RedisURL, 4)
	if err != nil {
		return nil, err
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis: %w", err)
	}
	u, err := e.svc.newUser(ctx, 0)
	if err != nil {
		rdb.Close()
		return nil, err
	}
	const workers = 64
	hc := newClient(workers, 30*time.Second)
	base := e.cfg.Base.String()
	return func() {
		defer rdb.Close()
		c := newCounter()
		start := time.Now()
		fanOut(n, workers, func(i int) {
			a := doWith(ctx, hc, base, "", call{method: "POST", path: "/api/images/cancel", key: u.Key, rid: fmt.Sprintf("%s-ghost-%d", e.run, i)})
			c.add(a.label())
		})
		took := time.Since(start)
		r.note("answers: %s in %s (%.0f cancels/s)", c.t, fmtDur(took), float64(n)/took.Seconds())
		r.expect("answers", c.t["200"] == n, fmt.Sprintf("all %d: 200 canceled", n), c.t.String())
		keys, err := countKeys(ctx, rdb, store.DefaultKeys.Request(u.ID, "*"))
		if err != nil {
			r.fail(err)
			return
		}
		want := min(int64(n), e.cfg.MaxTombstones)
		r.expect("request keys of the user in Redis", keys <= want,
			fmt.Sprintf("≤ %d (MAX_TOMBSTONES_PER_USER)", want), fmt.Sprintf("%d", keys))
		newest := store.DefaultKeys.Request(u.ID, fmt.Sprintf("%s-ghost-%d", e.run, n-1))
		if ttl, err := rdb.TTL(ctx, newest).Result(); err == nil {
			r.note("the newest tombstone is kept for %s", ttl)
		}
	}, nil
}

// countKeys counts the keys matching pattern with SCAN (never KEYS: the service's Redis may be big).
func countKeys(ctx context.Context, rdb redis.UniversalClient, pattern string) (int64, error) {
	var n int64
	iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		n++
	}
	return n, iter.Err()
}
