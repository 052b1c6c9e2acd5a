package jobs

import (
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	for _, c := range []struct {
		work time.Duration
		rate float64 // work-seconds completed per second
		want int
	}{
		{time.Second, 0, 30},            // nothing measured yet
		{time.Second, 10, 1},            // never less than a second
		{25 * time.Second, 10, 3},       // rounded up
		{100_000 * time.Second, 1, 300}, // never more than five minutes
		{0, 5, 1},
		{time.Minute, 2, 30}, // a minute of work on two busy slots
	} {
		if got := retryAfter(c.work, c.rate); got != c.want {
			t.Errorf("retryAfter(%s, %v) = %d, want %d", c.work, c.rate, got, c.want)
		}
	}
}
