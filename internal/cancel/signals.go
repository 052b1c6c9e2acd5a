package cancel

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// listen subscribes to one channel and calls onMessage for each message. Pub/sub drops what is
// published while the connection is down, so after every re-subscription it calls onResubscribe, whose
// job is to re-read the state of everything it waits for. ready is closed once the first subscription
// is confirmed: nothing published after that is missed.
func listen(ctx context.Context, rdb redis.UniversalClient, channel string, ready chan<- struct{},
	onMessage func(payload string), onResubscribe func()) error {
	ps := rdb.Subscribe(ctx, channel)
	defer ps.Close()
	ch := ps.ChannelWithSubscriptions(redis.WithChannelSize(4096))
	first := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-ch:
			if !ok {
				return errors.New("cancel: subscription closed")
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind != "subscribe" {
					continue
				}
				if first {
					first = false
					close(ready)
				} else {
					onResubscribe()
				}
			case *redis.Message:
				onMessage(m.Payload)
			}
		}
	}
}

// parseSignal splits a "userID:requestID" message.
func parseSignal(s string) (int64, string, bool) {
	u, rid, ok := strings.Cut(s, ":")
	if !ok {
		return 0, "", false
	}
	uid, err := strconv.ParseInt(u, 10, 64)
	return uid, rid, err == nil
}

// Hub wakes the API's waiting upsize requests when their outcome is decided, from any process.
// One subscription serves every waiter of the process.
type Hub struct {
	rdb     redis.UniversalClient
	channel string
	ready   chan struct{}

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
}

// NewHub makes a hub for the registry's events channel; call Run to start it.
func NewHub(rdb redis.UniversalClient, r *Registry) *Hub {
	return &Hub{rdb: rdb, channel: r.keys.Events(), ready: make(chan struct{}), waiters: map[string]map[chan struct{}]struct{}{}}
}

// Run subscribes until ctx is done.
func (h *Hub) Run(ctx context.Context) error {
	return listen(ctx, h.rdb, h.channel, h.ready, h.wake, h.wakeAll)
}

// Ready is closed when the hub receives signals.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// Watch returns a channel that receives a value whenever the request's state may have changed to an
// outcome. Call it before the action whose outcome you wait for, then re-read the state on each wake.
func (h *Hub) Watch(userID int64, requestID string) (<-chan struct{}, func()) {
	key := signal(userID, requestID)
	c := make(chan struct{}, 1)
	h.mu.Lock()
	set := h.waiters[key]
	if set == nil {
		set = map[chan struct{}]struct{}{}
		h.waiters[key] = set
	}
	set[c] = struct{}{}
	h.mu.Unlock()
	return c, func() {
		h.mu.Lock()
		delete(set, c)
		if len(set) == 0 && h.waiters[key] != nil && len(h.waiters[key]) == 0 {
			delete(h.waiters, key)
		}
		h.mu.Unlock()
	}
}

// Waiting is the number of requests waiting in this process.
func (h *Hub) Waiting() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, s := range h.waiters {
		n += len(s)
	}
	return n
}

func (h *Hub) wake(key string) {
	h.mu.Lock()
	for c := range h.waiters[key] {
		notify(c)
	}
	h.mu.Unlock()
}

func (h *Hub) wakeAll() {
	h.mu.Lock()
	for _, set := range h.waiters {
		for c := range set {
			notify(c)
		}
	}
	h.mu.Unlock()
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default: // a wake is already pending
	}
}
