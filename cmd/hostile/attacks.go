package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// attack is one item of the security review. setup makes what it needs (users, images) before the
// memory sampler starts, and returns send, the attack itself, which records its expectations in the
// result; judge then adds the expectations on memory.
type attack struct {
	name   string
	review string               // what the review measured before the fix
	what   func(*config) string // what is sent, with this run's counts
	needs  func(*config) string // why it cannot run with these flags ("" or nil: it can)
	setup  func(ctx context.Context, e *env, r *result) (send func(), err error)
	judge  func(e *env, r *result, m *memory)
}

// attacks, in the review's order (the numbers are its items), then the measurement of what an idle
// connection costs, which the README's memory bound needs.
var attacks = []attack{
	methodsAttack,         // 1
	scanBombUploadAttack,  // 2
	bombWorkerAttack,      // 2
	bigUploadsAttack,      // 3
	bigDecodesAttack,      // 3, its decode half (not in the review)
	trickleUnauthAttack,   // 4
	trickleAuthAttack,     // 4
	tombstonesAttack,      // 6
	sideLimitsAttack,      // 7
	creditsOverflowAttack, // 8
	smallAttack,           // 10
	connectionsAttack,     // the per-connection cost of the memory bound
}

func attackNames() []string {
	names := make([]string, len(attacks))
	for i, a := range attacks {
		names[i] = a.name
	}
	return names
}

// peakWithin is the usual memory expectation: the attack's peak growth stays under bound.
func peakWithin(r *result, m *memory, bound int64, why string) {
	g := m.PeakGrowth()
	r.expect("peak RSS growth", g <= bound, fmt.Sprintf("≤ %s (%s)", fmtBytes(bound), why), fmtBytes(g))
}

// imageCache makes each test image once: a 7000² progressive JPEG takes a second or two.
type imageCache struct {
	mu     sync.Mutex
	images map[string][]byte
}

func newImageCache() *imageCache { return &imageCache{images: map[string][]byte{}} }

// get returns the image called name, making it with make the first time, and notes how long that took.
func (c *imageCache) get(name string, r *result, make func() []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.images[name]; ok {
		return b
	}
	start := time.Now()
	b := make()
	r.note("made %s (%s) in %s", name, fmtBytes(int64(len(b))), fmtDur(time.Since(start)))
	c.images[name] = b
	return b
}

// fanOut runs f(i) for i in [0, n) on at most workers goroutines.
func fanOut(n, workers int, f func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(n, workers) {
		wg.Go(func() {
			for i := range next {
				f(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// counter is a tally safe for concurrent use.
type counter struct {
	mu sync.Mutex
	t  tally
}

func newCounter() *counter { return &counter{t: tally{}} }

func (c *counter) add(label string) {
	c.mu.Lock()
	c.t.add(label)
	c.mu.Unlock()
}

// durations keeps the longest of many concurrent durations.
type durations struct {
	mu      sync.Mutex
	longest time.Duration
}

func (d *durations) add(t time.Duration) {
	d.mu.Lock()
	d.longest = max(d.longest, t)
	d.mu.Unlock()
}
