package promcheck

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/storage"
)

// scenario is an hour of samples (load 1m, 61 points) in which an alert must or must not fire.
type scenario struct {
	alert string
	fires bool
	what  string
	load  string
}

const (
	api    = `job="upsize-api", namespace="upsize"`
	worker = `job="upsize-worker", namespace="upsize"`
	route  = `route="/api/images/:id/upsize", method="POST", platform="web"`
)

// hist writes a classic histogram that observes perMin values v a minute for an hour.
func hist(name, lbls string, v, perMin float64) string {
	var b strings.Builder
	for _, le := range []string{"0.005", "0.01", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "20", "30", "60", "+Inf"} {
		bound, _ := strconv.ParseFloat(le, 64)
		inc := 0.0
		if v <= bound {
			inc = perMin
		}
		fmt.Fprintf(&b, "  %s_bucket{%s, le=%q} 0+%gx60\n", name, lbls, le, inc)
	}
	fmt.Fprintf(&b, "  %s_count{%s} 0+%gx60\n  %s_sum{%s} 0+%gx60\n", name, lbls, perMin, name, lbls, perMin*v)
	return b.String()
}

func load(lines ...string) string { return "load 1m\n" + strings.Join(lines, "\n") + "\n" }

var scenarios = []scenario{
	{"UpsizeBacklogGrowing", true, "pending rises by 5 a minute, two API replicas export it", load(
		`  upsize_queue_tasks{`+api+`, instance="a", queue="upsize_free", state="pending"} 0+5x60`,
		`  upsize_queue_tasks{`+api+`, instance="b", queue="upsize_free", state="pending"} 0+5x60`)},
	{"UpsizeBacklogGrowing", false, "a large but steady backlog", load(
		`  upsize_queue_tasks{` + api + `, instance="a", queue="upsize_free", state="pending"} 500x60`)},
	{"UpsizeBacklogGrowing", false, "a growing backlog under the floor", load(
		`  upsize_queue_tasks{` + api + `, instance="a", queue="upsize_free", state="pending"} 0+0.5x60`)},

	{"UpsizeBacklogStalled", true, "tasks wait, workers run none", load(
		`  upsize_queue_tasks{`+api+`, instance="a", queue="upsize_paid", state="pending"} 20x60`,
		`  upsize_task_runs_total{`+worker+`, instance="w", outcome="completed"} 100x60`)},
	{"UpsizeBacklogStalled", false, "tasks wait, workers complete them", load(
		`  upsize_queue_tasks{`+api+`, instance="a", queue="upsize_paid", state="pending"} 20x60`,
		`  upsize_task_runs_total{`+worker+`, instance="w", outcome="completed"} 0+10x60`)},

	{"UpsizeQueueWaitHigh", true, "tasks wait 15 s", load(
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", scale="2x", format="png"`, 15, 10))},
	{"UpsizeQueueWaitHigh", false, "tasks wait 4 ms", load(
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", scale="2x", format="png"`, 0.004, 10))},

	{"UpsizeQueueFull", true, "429 queue_full answers", load(
		`  upsize_upsize_outcomes_total{` + api + `, instance="a", outcome="rejected", reason="queue_full", scale="2x"} 0+30x60`)},

	{"UpsizeLatencyHigh", true, "upsizes answer in 25 s", load(
		hist("upsize_http_request_duration_seconds", api+`, instance="a", `+route+`, code="201"`, 25, 60))},
	{"UpsizeLatencyHigh", false, "upsizes answer in 5 s", load(
		hist("upsize_http_request_duration_seconds", api+`, instance="a", `+route+`, code="201"`, 5, 60))},

	{"UpsizeCancelToAnswerSlow", true, "409s come 500 ms after the cancel", load(
		hist("upsize_cancel_to_answer_seconds", api+`, instance="a"`, 0.5, 5))},
	{"UpsizeCancelToAnswerSlow", false, "409s come 8 ms after the cancel", load(
		hist("upsize_cancel_to_answer_seconds", api+`, instance="a"`, 0.008, 5))},
	{"UpsizeCancelToStopSlow", true, "libvips stops 500 ms after the cancel", load(
		hist("upsize_cancel_to_stop_seconds", worker+`, instance="w"`, 0.5, 5))},

	{"UpsizeHTTPErrorRatioHigh", true, "a third of upsizes answer 503", load(
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", `+route+`, code="503"} 0+10x60`,
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", `+route+`, code="201"} 0+20x60`)},
	{"UpsizeHTTPErrorRatioHigh", false, "only /readyz answers 503", load(
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", route="/readyz", method="GET", platform="web", code="503"} 0+12x60`,
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", `+route+`, code="201"} 0+20x60`)},
	{"UpsizeHTTPErrorRatioHigh", false, "one 503 every ten minutes in a quiet hour", load(
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", `+route+`, code="503"} 0+0.1x60`,
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", `+route+`, code="201"} 0+0.1x60`)},

	{"UpsizeFailureRatioHigh", true, "one upsize in six fails", load(
		`  upsize_upsize_outcomes_total{`+api+`, instance="a", outcome="failed", reason="invalid_image", scale="2x"} 0+10x60`,
		`  upsize_upsize_outcomes_total{`+api+`, instance="a", outcome="completed", reason="", scale="2x"} 0+50x60`)},

	{"UpsizeNoWorker", true, "no worker target at all", load(
		`  up{` + api + `, instance="a"} 1x60`)},
	{"UpsizeNoWorker", true, "the worker target fails its scrapes", load(
		`  up{`+api+`, instance="a"} 1x60`, `  up{`+worker+`, instance="w"} 0x60`)},

	{"UpsizeAPIDown", true, "the API target fails its scrapes", load(
		`  up{`+api+`, instance="a"} 0x60`, `  up{`+worker+`, instance="w"} 1x60`)},

	// Redis down as TestRedisDown shows it: every API /metrics answers 500 (up 0), and the workers'
	// pools stop hitting while misses go on.
	{"UpsizeRedisUnreachable", true, "every API scrape fails", load(
		`  up{`+api+`, instance="a"} 0x60`, `  up{`+api+`, instance="b"} 0x60`, `  up{`+worker+`, instance="w"} 1x60`,
		`  upsize_redis_pool_hits_total{`+worker+`, instance="w"} 0+15000x60`)},
	{"UpsizeRedisUnreachable", true, "the workers' pools cannot connect", load(
		`  up{`+api+`, instance="a"} 1x60`, `  up{`+worker+`, instance="w"} 1x60`,
		`  upsize_redis_pool_hits_total{`+worker+`, instance="w"} 5000x60`,
		`  upsize_redis_pool_misses_total{`+worker+`, instance="w"} 0+100x60`)},
	{"UpsizeRedisUnreachable", false, "one API replica of two fails its scrapes, workers hit", load(
		`  up{`+api+`, instance="a"} 0x60`, `  up{`+api+`, instance="b"} 1x60`, `  up{`+worker+`, instance="w"} 1x60`,
		`  upsize_redis_pool_hits_total{`+worker+`, instance="w"} 0+15000x60`,
		`  upsize_redis_pool_misses_total{`+worker+`, instance="w"} 0+1x60`)},

	{"UpsizeRedisPoolTimeouts", true, "a worker's pool times out", load(
		`  upsize_redis_pool_timeouts_total{` + worker + `, instance="w"} 0+3x60`)},
}

// evalStep is how often the simulated rule group evaluates.
const evalStep = 30 * time.Second

// firing replays a rule group evaluating every evalStep from start to end and tells, for each
// evaluation, whether the alert fires then, as Prometheus decides it: its expression returned
// something at every evaluation of the last `for` (before start, the data had nothing).
func firing(t *testing.T, ng *promql.Engine, st storage.Queryable, rl *monitoringv1.Rule, start, end time.Time) []bool {
	t.Helper()
	forDur, err := model.ParseDuration(string(*rl.For))
	if err != nil {
		t.Fatal(err)
	}
	need := int(time.Duration(forDur) / evalStep)
	var out []bool
	run := 0 // evaluations in a row that returned something
	for at := start; !at.After(end); at = at.Add(evalStep) {
		if len(instant(t, ng, st, rl.Expr.String(), at)) > 0 {
			run++
		} else {
			run = 0
		}
		out = append(out, run > need)
	}
	return out
}

// Each alert fires in a scenario of the failure it is about, at the end of an hour of it, and stays
// quiet in near misses for the whole hour. Every alert needs a firing scenario here.
func TestAlertScenarios(t *testing.T) {
	r := loadRule(t)
	rules := map[string]*monitoringv1.Rule{}
	for _, q := range ruleQueries(r) {
		rules[q.alert.Alert] = q.alert
	}
	ng := newEngine(t)
	start, end := time.Unix(0, 0), time.Unix(0, 0).Add(time.Hour)
	covered := map[string]bool{}
	for _, sc := range scenarios {
		rl, ok := rules[sc.alert]
		if !ok {
			t.Errorf("scenario %q: no alert %s in %s", sc.what, sc.alert, rulePath)
			continue
		}
		fires := firing(t, ng, promqltest.LoadedStorage(t, sc.load), rl, start, end)
		if sc.fires {
			covered[sc.alert] = true
			if !fires[len(fires)-1] {
				t.Errorf("%s does not fire after an hour in which %s", sc.alert, sc.what)
			}
			continue
		}
		for i, f := range fires {
			if f {
				t.Errorf("%s fires at %s when %s", sc.alert, time.Duration(i)*evalStep, sc.what)
				break
			}
		}
	}
	for _, name := range sortedKeys(rules) {
		if !covered[name] {
			t.Errorf("alert %s has no scenario in which it fires", name)
		}
	}
}
