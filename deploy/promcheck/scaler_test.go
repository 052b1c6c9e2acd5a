package promcheck

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/promqltest"

	"upsize/internal/jobs"
)

// KEDA scales the workers on the ScaledObject's query (deploy/k8s/base/worker-scaledobject.yaml). Its
// metric names and labels are checked against the real run with the panels' (TestAgainstRealService:
// it gives one number there too). Here, on synthetic scrapes: every API replica exports the same work
// backlog, so the query must give the backlog once whatever the number of replicas, leave out another
// namespace's deployment, and give nothing (not 0) when the API exports no backlog (Redis down, or no
// API scraped), which with ignoreNullValues "false" makes KEDA fall back instead of shrinking the
// workers to one.
func TestScalerQuery(t *testing.T) {
	so := loadScaledObject(t)
	qs := scalerQueries(so)
	if len(qs) != 1 {
		t.Fatalf("%s: %d prometheus triggers, want one (the work backlog)", scalerPath, len(qs))
	}
	q := qs[0]
	for _, tr := range so.Spec.Triggers {
		if v := tr.Metadata["ignoreNullValues"]; tr.Type == "prometheus" && v != "false" {
			t.Errorf("%s: ignoreNullValues %q: an empty result (the cases below) would read as no backlog", q.where, v)
		}
	}
	ng := newEngine(t)
	end := time.Unix(0, 0).Add(time.Hour)

	// Each queue i holds 10*(i+1) s of work: 210 s over the six queues.
	backlog := func(instance, namespace string) []string {
		var lines []string
		for i, queue := range jobs.Queues {
			lines = append(lines, fmt.Sprintf(`  upsize_backlog_work_seconds{job="upsize-api", namespace=%q, instance=%q, queue=%q} %dx60`,
				namespace, instance, queue, 10*(i+1)))
		}
		return lines
	}
	for _, c := range []struct {
		what  string
		lines []string
		want  float64 // NaN: no series at all
	}{
		{"one API replica", backlog("a", "upsize"), 210},
		{"three API replicas export the same backlog", append(append(backlog("a", "upsize"), backlog("b", "upsize")...), backlog("c", "upsize")...), 210},
		{"another namespace's deployment beside", append(backlog("a", "upsize"), backlog("x", "upsize-staging")...), 210},
		{"Redis down: the API exports upsize_redis_up 0 and no backlog", []string{
			`  upsize_redis_up{job="upsize-api", namespace="upsize", instance="a"} 0x60`,
			`  up{job="upsize-api", namespace="upsize", instance="a"} 1x60`}, math.NaN()},
		{"no API scraped", []string{`  up{job="upsize-worker", namespace="upsize", instance="w"} 1x60`}, math.NaN()},
	} {
		st := promqltest.LoadedStorage(t, load(c.lines...))
		vec := instant(t, ng, st, q.expr, end)
		switch {
		case math.IsNaN(c.want) && len(vec) != 0:
			t.Errorf("%s: %s gives %v, want no series (KEDA then falls back)", c.what, q.where, vec)
		case !math.IsNaN(c.want) && (len(vec) != 1 || vec[0].F != c.want):
			t.Errorf("%s: %s gives %v, want one series of %g", c.what, q.where, vec, c.want)
		}
	}
	if !strings.Contains(q.expr, "upsize_backlog_work_seconds") {
		t.Errorf("%s: %q does not read the work backlog", q.where, q.expr)
	}
}
