package jobs

import "testing"

func TestRetryAfter(t *testing.T) {
	for _, c := range []struct {
		excess int64
		rate   float64
		want   int
	}{
		{1, 0, 30},        // nothing measured yet
		{1, 10, 1},        // never less than a second
		{25, 10, 3},       // rounded up
		{100_000, 1, 300}, // never more than five minutes
		{0, 5, 1},
	} {
		if got := retryAfter(c.excess, c.rate); got != c.want {
			t.Errorf("retryAfter(%d, %v) = %d, want %d", c.excess, c.rate, got, c.want)
		}
	}
}
