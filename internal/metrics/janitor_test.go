package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Every janitor series exists from the start (alerts on rate() and on absence need them), with bounded labels.
func TestJanitorSeriesExistAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewJanitor(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{
		"upsize_janitor_removed_total": 2, "upsize_janitor_removed_bytes_total": 2, "upsize_janitor_runs_total": 3,
		"upsize_janitor_last_success_timestamp_seconds": 1,
	}
	for _, mf := range mfs {
		if n, ok := want[mf.GetName()]; !ok || len(mf.GetMetric()) != n {
			t.Errorf("%s: %d series", mf.GetName(), len(mf.GetMetric()))
		}
		delete(want, mf.GetName())
	}
	if len(want) != 0 {
		t.Errorf("missing: %v", want)
	}
}
