// Package testredis gives each test a Redis database of its own, emptied before and after, so tests can
// run twice in a row, in parallel packages, and beside a running service. It imports nothing of the repo.
package testredis

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Databases 1-12 are for Go tests; 13 is the load tool's test, 15 the acceptance run, 0 a running service.
const firstDB, lastDB = 1, 12

const lockKey = "upsize-test:lock"

// claim takes a database atomically: whoever sets the lock also empties the database.
var claim = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', 1800) then
  redis.call('FLUSHDB')
  redis.call('SET', KEYS[1], ARGV[1], 'EX', 1800)
  return 1
end
return 0`)

// RedisAddr is where tests find Redis: $TEST_REDIS_ADDR or 127.0.0.1:6379.
func RedisAddr() string {
	if a := os.Getenv("TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// Redis returns a client on a database no other test uses right now, empty; it is emptied again
// when the test ends, so tests can run twice in a row and beside a running service (DB 0).
func Redis(t testing.TB) *redis.Client {
	t.Helper()
	ctx := context.Background()
	token := fmt.Sprintf("%d-%s", os.Getpid(), t.Name())
	for db := firstDB; db <= lastDB; db++ {
		c := redis.NewClient(&redis.Options{Addr: RedisAddr(), DB: db, PoolSize: 256})
		ok, err := claim.Run(ctx, c, []string{lockKey}, token).Int()
		if err != nil {
			c.Close()
			t.Fatalf("Redis at %s: %v (start one with scripts/redis-local.sh)", RedisAddr(), err)
		}
		if ok == 1 {
			t.Cleanup(func() {
				c.FlushDB(context.Background())
				c.Close()
			})
			return c
		}
		c.Close()
	}
	t.Fatalf("no free Redis database among %d-%d", firstDB, lastDB)
	return nil
}

// RedisURL is the URL of the database c uses.
func RedisURL(c *redis.Client) string {
	return fmt.Sprintf("redis://%s/%d", c.Options().Addr, c.Options().DB)
}
