package janitor

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// errLockLost ends a run whose lock could not be renewed: it may have expired, and another replica may be
// sweeping now.
var errLockLost = errors.New("janitor: lock lost")

// renewScript extends the lock only while it is still ours. KEYS: lock. ARGV: token, ttl ms.
var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`)

// releaseScript deletes the lock only if it is still ours: a run that outlived its lock must not free the
// lock of the run that took it over. KEYS: lock. ARGV: token.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// lock is a Redis lock held by one run: SET NX with a random token and a TTL, so that a replica killed
// mid-run frees it after the TTL; renewed every third of the TTL while the run goes on.
type lock struct {
	rdb        redis.UniversalClient
	key, token string
	ttl        time.Duration
	stop       context.CancelCauseFunc
	done       chan struct{}
}

// acquire takes the lock, or returns nil if another run holds it.
func acquire(ctx context.Context, rdb redis.UniversalClient, key string, ttl time.Duration) (*lock, error) {
	token := rand.Text()
	ok, err := rdb.SetNX(ctx, key, token, ttl).Result()
	if err != nil || !ok {
		return nil, err
	}
	return &lock{rdb: rdb, key: key, token: token, ttl: ttl}, nil
}

// hold renews the lock until release and returns a context that ends, with errLockLost as its cause, if a
// renewal fails: sweeping on could overlap with another replica once the lock expires.
func (l *lock) hold(ctx context.Context) context.Context {
	ctx, l.stop = context.WithCancelCause(ctx)
	l.done = make(chan struct{})
	go func() {
		defer close(l.done)
		t := time.NewTicker(l.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			ok, err := renewScript.Run(ctx, l.rdb, []string{l.key}, l.token, l.ttl.Milliseconds()).Int()
			if err != nil || ok == 0 {
				l.stop(fmt.Errorf("%w (renewal: %d, %v)", errLockLost, ok, err))
				return
			}
		}
	}()
	return ctx
}

// release stops the renewals and frees the lock if it is still ours. If Redis does not answer, the lock
// expires by itself.
func (l *lock) release() {
	if l.stop != nil {
		l.stop(nil)
		<-l.done
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	releaseScript.Run(ctx, l.rdb, []string{l.key}, l.token)
}
