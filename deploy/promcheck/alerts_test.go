package promcheck

import (
	"fmt"
	"regexp"
	"sort"
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

// scenario is an hour of samples (load 1m, 61 points, or load 15s, 241) in which an alert must or must
// not fire. When it fires, series are the label sets it fires with at the end, as PromQL writes them.
type scenario struct {
	alert  string
	what   string
	series []string // nil: it must stay quiet
	load   string
}

const (
	api    = `job="upsize-api", namespace="upsize"`
	worker = `job="upsize-worker", namespace="upsize"`
	route  = `route="/api/images/:id/upsize", method="POST", platform="web"`
	paid   = `queue="upsize_paid"`
	free   = `queue="upsize_free"`

	paidSmall = `queue="upsize_paid_small"`
	freeSmall = `queue="upsize_free_small"`
	paidMore  = `queue="upsize_paid_more"`
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

// load writes a promqltest load command; a blank line would end it, so hist's trailing newline goes.
func load(lines ...string) string { return loadAt("1m", lines) }

func loadAt(interval string, lines []string) string {
	var b strings.Builder
	b.WriteString("load " + interval + "\n")
	for _, l := range lines {
		b.WriteString(strings.TrimRight(l, "\n") + "\n")
	}
	return b.String()
}

// every15s writes a series scraped every 15 s for an hour: value(k) at the k-th scrape.
func every15s(series string, value func(k int) float64) string {
	var b strings.Builder
	b.WriteString("  " + series)
	for k := 0; k <= 240; k++ {
		fmt.Fprintf(&b, " %g", value(k))
	}
	return b.String()
}

func load15s(lines ...string) string { return loadAt("15s", lines) }

func fires(alert, what string, series []string, data string) scenario {
	return scenario{alert, what, series, data}
}

func quiet(alert, what, data string) scenario { return scenario{alert, what, nil, data} }

var scenarios = []scenario{
	fires("UpsizeBacklogGrowing", "the work backlog rises by 30 s a minute, two API replicas export it", []string{`{queue="upsize_free"}`}, load(
		`  upsize_backlog_work_seconds{`+api+`, instance="a", `+free+`} 0+30x60`,
		`  upsize_backlog_work_seconds{`+api+`, instance="b", `+free+`} 0+30x60`)),
	quiet("UpsizeBacklogGrowing", "a large but steady work backlog", load(
		`  upsize_backlog_work_seconds{`+api+`, instance="a", `+free+`} 3000x60`)),
	quiet("UpsizeBacklogGrowing", "a growing work backlog under the floor", load(
		`  upsize_backlog_work_seconds{`+api+`, instance="a", `+free+`} 0+4x60`)),
	// Tasks are not work: five more small 2x a minute is a few seconds of it.
	quiet("UpsizeBacklogGrowing", "small tasks pile up, a few seconds of work", load(
		`  upsize_queue_tasks{`+api+`, instance="a", `+paidSmall+`, state="pending"} 0+5x60`,
		`  upsize_backlog_work_seconds{`+api+`, instance="a", `+paidSmall+`} 0+0.1x60`)),

	// Every API replica exports the same figure: taken once per queue, then summed.
	fires("UpsizeBacklogWorkHigh", "4000 s of work in two queues, two API replicas export it", []string{`{}`}, load(
		`  upsize_backlog_work_seconds{`+api+`, instance="a", `+paid+`} 2500x60`,
		`  upsize_backlog_work_seconds{`+api+`, instance="b", `+paid+`} 2500x60`,
		`  upsize_backlog_work_seconds{`+api+`, instance="a", `+paidMore+`} 1500x60`,
		`  upsize_backlog_work_seconds{`+api+`, instance="b", `+paidMore+`} 1500x60`)),
	quiet("UpsizeBacklogWorkHigh", "2000 s of work, which two API replicas export", load(
		`  upsize_backlog_work_seconds{`+api+`, instance="a", `+paid+`} 1200x60`,
		`  upsize_backlog_work_seconds{`+api+`, instance="b", `+paid+`} 1200x60`,
		`  upsize_backlog_work_seconds{`+api+`, instance="a", `+free+`} 800x60`,
		`  upsize_backlog_work_seconds{`+api+`, instance="b", `+free+`} 800x60`)),
	quiet("UpsizeBacklogWorkHigh", "5000 s of work for 5 minutes, then drained", load(
		`  upsize_backlog_work_seconds{`+api+`, instance="a", `+paid+`} 1000x40 5000x5 1000x14`)),

	fires("UpsizeBacklogStalled", "tasks wait, workers run none", []string{`{queue="upsize_paid"}`}, load(
		`  upsize_queue_tasks{`+api+`, instance="a", `+paid+`, state="pending"} 20x60`,
		`  upsize_task_runs_total{`+worker+`, instance="w", `+paid+`, outcome="completed"} 100x60`)),
	fires("UpsizeBacklogStalled", "free tasks wait, the workers run only paid ones", []string{`{queue="upsize_free"}`}, load(
		`  upsize_queue_tasks{`+api+`, instance="a", `+free+`, state="pending"} 20x60`,
		`  upsize_queue_tasks{`+api+`, instance="a", `+paid+`, state="pending"} 0x60`,
		`  upsize_task_runs_total{`+worker+`, instance="w", `+paid+`, outcome="completed"} 0+10x60`)),
	// The workers have run nothing since they started, so upsize_task_runs_total has no series at all.
	fires("UpsizeBacklogStalled", "tasks wait, the workers have run none since they started", []string{`{queue="upsize_paid"}`}, load(
		`  upsize_queue_tasks{`+api+`, instance="a", `+paid+`, state="pending"} 20x60`,
		`  up{`+worker+`, instance="w"} 1x60`)),
	fires("UpsizeBacklogStalled", "small free tasks wait, the workers run only large ones", []string{`{queue="upsize_free_small"}`}, load(
		`  upsize_queue_tasks{`+api+`, instance="a", `+freeSmall+`, state="pending"} 20x60`,
		`  upsize_task_runs_total{`+worker+`, instance="w", `+paid+`, outcome="completed"} 0+10x60`)),
	quiet("UpsizeBacklogStalled", "tasks wait, workers complete them", load(
		`  upsize_queue_tasks{`+api+`, instance="a", `+paid+`, state="pending"} 20x60`,
		`  upsize_task_runs_total{`+worker+`, instance="w", `+paid+`, outcome="completed"} 0+10x60`)),
	quiet("UpsizeBacklogStalled", "both queues wait, the workers run mostly paid tasks and some free ones", load(
		`  upsize_queue_tasks{`+api+`, instance="a", `+paid+`, state="pending"} 200x60`,
		`  upsize_queue_tasks{`+api+`, instance="a", `+free+`, state="pending"} 20x60`,
		`  upsize_task_runs_total{`+worker+`, instance="w", `+paid+`, outcome="completed"} 0+60x60`,
		`  upsize_task_runs_total{`+worker+`, instance="w", `+free+`, outcome="completed"} 0+2x60`)),

	fires("UpsizeQueueWaitHigh", "free tasks wait 15 s, paid ones 4 ms", []string{`{queue="upsize_free"}`}, load(
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+free+`, scale="2x", format="png"`, 15, 10),
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+paid+`, scale="2x", format="png"`, 0.004, 60))),
	quiet("UpsizeQueueWaitHigh", "tasks of both queues wait 4 ms", load(
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+free+`, scale="2x", format="png"`, 0.004, 10),
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+paid+`, scale="4x", format="webp"`, 0.004, 60))),
	// A user's requests beyond their first two wait behind those by design.
	quiet("UpsizeQueueWaitHigh", "a user's extra large requests wait 60 s, first ones 4 ms", load(
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+paidMore+`, scale="8x", format="png"`, 60, 5),
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+paid+`, scale="8x", format="png"`, 0.004, 5))),
	quiet("UpsizeQueueWaitHigh", "small tasks wait 15 s (UpsizeSmallTasksWaiting's case)", load(
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+paidSmall+`, scale="2x", format="jpeg"`, 15, 60))),

	fires("UpsizeSmallTasksWaiting", "small paid tasks wait 5 s, small free ones 4 ms", []string{`{queue="upsize_paid_small"}`}, load(
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+paidSmall+`, scale="2x", format="jpeg"`, 5, 60),
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+freeSmall+`, scale="2x", format="jpeg"`, 0.004, 10))),
	// Heavy work waits; the reserved slot keeps small tasks moving.
	quiet("UpsizeSmallTasksWaiting", "large tasks wait 30 s, small ones 4 ms", load(
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+paid+`, scale="8x", format="png"`, 30, 5),
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+paidSmall+`, scale="2x", format="jpeg"`, 0.004, 60))),
	quiet("UpsizeSmallTasksWaiting", "small tasks wait 1 s", load(
		hist("upsize_task_queue_wait_seconds", worker+`, instance="w", `+freeSmall+`, scale="2x", format="png"`, 1, 60))),

	fires("UpsizeQueueFull", "429 queue_full answers", []string{`{}`}, load(
		`  upsize_upsize_outcomes_total{`+api+`, instance="a", outcome="rejected", reason="queue_full", scale="2x"} 0+30x60`)),

	fires("UpsizeLatencyHigh", "upsizes answer in 25 s", []string{`{}`}, load(
		hist("upsize_http_request_duration_seconds", api+`, instance="a", `+route+`, code="201"`, 25, 60))),
	quiet("UpsizeLatencyHigh", "upsizes answer in 5 s", load(
		hist("upsize_http_request_duration_seconds", api+`, instance="a", `+route+`, code="201"`, 5, 60))),

	fires("UpsizeCancelToAnswerSlow", "409s come 500 ms after the cancel", []string{`{}`}, load(
		hist("upsize_cancel_to_answer_seconds", api+`, instance="a"`, 0.5, 5))),
	quiet("UpsizeCancelToAnswerSlow", "409s come 8 ms after the cancel", load(
		hist("upsize_cancel_to_answer_seconds", api+`, instance="a"`, 0.008, 5))),
	fires("UpsizeCancelToStopSlow", "libvips stops 500 ms after the cancel", []string{`{}`}, load(
		hist("upsize_cancel_to_stop_seconds", worker+`, instance="w"`, 0.5, 5))),

	fires("UpsizeHTTPErrorRatioHigh", "a third of upsizes answer 503", []string{`{}`}, load(
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", `+route+`, code="503"} 0+10x60`,
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", `+route+`, code="201"} 0+20x60`)),
	quiet("UpsizeHTTPErrorRatioHigh", "only /readyz answers 503", load(
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", route="/readyz", method="GET", platform="web", code="503"} 0+12x60`,
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", `+route+`, code="201"} 0+20x60`)),
	quiet("UpsizeHTTPErrorRatioHigh", "one 503 every ten minutes in a quiet hour", load(
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", `+route+`, code="503"} 0+0.1x60`,
		`  upsize_http_request_duration_seconds_count{`+api+`, instance="a", `+route+`, code="201"} 0+0.1x60`)),

	fires("UpsizeFailureRatioHigh", "one upsize in six fails", []string{`{}`}, load(
		`  upsize_upsize_outcomes_total{`+api+`, instance="a", outcome="failed", reason="invalid_image", scale="2x"} 0+10x60`,
		`  upsize_upsize_outcomes_total{`+api+`, instance="a", outcome="completed", reason="", scale="2x"} 0+50x60`)),

	// absent() of a comparison, not of a bare selector, carries no labels.
	fires("UpsizeNoWorker", "no worker target at all", []string{`{}`}, load(
		`  up{`+api+`, instance="a"} 1x60`)),
	fires("UpsizeNoWorker", "the worker target fails its scrapes", []string{`{}`}, load(
		`  up{`+api+`, instance="a"} 1x60`, `  up{`+worker+`, instance="w"} 0x60`)),

	fires("UpsizeAPIDown", "the API target fails its scrapes", []string{`{}`}, load(
		`  up{`+api+`, instance="a"} 0x60`, `  up{`+worker+`, instance="w"} 1x60`)),
	quiet("UpsizeAPIDown", "one API replica of two fails its scrapes", load(
		`  up{`+api+`, instance="a"} 0x60`, `  up{`+api+`, instance="b"} 1x60`, `  up{`+worker+`, instance="w"} 1x60`)),
	// Redis down does not fail a scrape any more (TestRedisDown): the API is still scraped.
	quiet("UpsizeAPIDown", "Redis refuses every process, every scrape answers", load(
		`  up{`+api+`, instance="a"} 1x60`, `  up{`+worker+`, instance="w"} 1x60`,
		`  upsize_redis_up{`+api+`, instance="a"} 0x60`, `  upsize_redis_up{`+worker+`, instance="w"} 0x60`)),

	// Redis down as TestRedisDown shows it: every scrape answers, upsize_redis_up says 0.
	fires("UpsizeRedisUnreachable", "Redis refuses every process", []string{`{job="upsize-api"}`, `{job="upsize-worker"}`}, load(
		`  up{`+api+`, instance="a"} 1x60`, `  up{`+api+`, instance="b"} 1x60`, `  up{`+worker+`, instance="w"} 1x60`,
		`  upsize_redis_up{`+api+`, instance="a"} 0x60`, `  upsize_redis_up{`+api+`, instance="b"} 0x60`,
		`  upsize_redis_up{`+worker+`, instance="w"} 0x60`)),
	fires("UpsizeRedisUnreachable", "one API replica of two cannot reach Redis", []string{`{job="upsize-api"}`}, load(
		`  upsize_redis_up{`+api+`, instance="a"} 0x60`, `  upsize_redis_up{`+api+`, instance="b"} 1x60`,
		`  upsize_redis_up{`+worker+`, instance="w"} 1x60`)),
	fires("UpsizeRedisUnreachable", "one worker of three cannot reach Redis", []string{`{job="upsize-worker"}`}, load(
		`  upsize_redis_up{`+api+`, instance="a"} 1x60`, `  upsize_redis_up{`+worker+`, instance="w1"} 1x60`,
		`  upsize_redis_up{`+worker+`, instance="w2"} 0x60`, `  upsize_redis_up{`+worker+`, instance="w3"} 1x60`)),
	quiet("UpsizeRedisUnreachable", "every process reaches Redis", load(
		`  upsize_redis_up{`+api+`, instance="a"} 1x60`, `  upsize_redis_up{`+worker+`, instance="w"} 1x60`)),
	// UpsizeAPIDown's case; the workers still say Redis answers.
	quiet("UpsizeRedisUnreachable", "no API is scraped, the workers reach Redis", load(
		`  up{`+api+`, instance="a"} 0x60`, `  up{`+worker+`, instance="w"} 1x60`,
		`  upsize_redis_up{`+worker+`, instance="w"} 1x60`)),
	// At every scrape one of four workers has a failed PING, never the same one twice in a row: each
	// process reaches Redis every minute, so nothing is down.
	quiet("UpsizeRedisUnreachable", "four workers each fail one PING in four, in turn", load15s(
		every15s(`upsize_redis_up{`+worker+`, instance="w0"}`, func(k int) float64 { return b2f(k%4 != 0) }),
		every15s(`upsize_redis_up{`+worker+`, instance="w1"}`, func(k int) float64 { return b2f(k%4 != 1) }),
		every15s(`upsize_redis_up{`+worker+`, instance="w2"}`, func(k int) float64 { return b2f(k%4 != 2) }),
		every15s(`upsize_redis_up{`+worker+`, instance="w3"}`, func(k int) float64 { return b2f(k%4 != 3) }))),
	quiet("UpsizeRedisUnreachable", "a worker loses Redis for 90 s (a failover)", load15s(
		every15s(`upsize_redis_up{`+worker+`, instance="w"}`, func(k int) float64 { return b2f(k < 40 || k >= 46) }))),

	fires("UpsizeRedisPoolTimeouts", "a worker's pool times out", []string{`{instance="w", job="upsize-worker"}`}, load(
		`  upsize_redis_pool_timeouts_total{`+worker+`, instance="w"} 0+3x60`)),
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
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

// Each alert fires in a scenario of the failure it is about, at the end of an hour of it, with the
// label sets the scenario names, and stays quiet in near misses for the whole hour. Every alert needs
// a firing scenario here, and every label its annotations use must be on what it fires with.
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
		st := promqltest.LoadedStorage(t, sc.load)
		fires := firing(t, ng, st, rl, start, end)
		if sc.series == nil {
			for i, f := range fires {
				if f {
					t.Errorf("%s fires at %s when %s", sc.alert, time.Duration(i)*evalStep, sc.what)
					break
				}
			}
			continue
		}
		covered[sc.alert] = true
		if !fires[len(fires)-1] {
			t.Errorf("%s does not fire after an hour in which %s", sc.alert, sc.what)
			continue
		}
		vec := instant(t, ng, st, rl.Expr.String(), end)
		if got := labelSets(vec); strings.Join(got, " ") != strings.Join(sortedCopy(sc.series), " ") {
			t.Errorf("%s fires with %v when %s, want %v", sc.alert, got, sc.what, sc.series)
		}
		checkAnnotationLabels(t, rl, vec)
	}
	for _, name := range sortedKeys(rules) {
		if !covered[name] {
			t.Errorf("alert %s has no scenario in which it fires", name)
		}
	}
}

// labelSets are the label sets of a vector, sorted.
func labelSets(vec promql.Vector) []string {
	var out []string
	for _, s := range vec {
		out = append(out, s.Metric.String())
	}
	sort.Strings(out)
	return out
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

var annotationLabelRe = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)

// checkAnnotationLabels: every {{ $labels.x }} of the alert's annotations is a label of each series it
// fires with; otherwise the page says "Upsize backlog of  keeps growing".
func checkAnnotationLabels(t *testing.T, rl *monitoringv1.Rule, vec promql.Vector) {
	t.Helper()
	for _, a := range sortedKeys(rl.Annotations) {
		for _, m := range annotationLabelRe.FindAllStringSubmatch(rl.Annotations[a], -1) {
			for _, s := range vec {
				if s.Metric.Get(m[1]) == "" {
					t.Errorf("%s: annotation %s uses $labels.%s, which %s does not have", rl.Alert, a, m[1], s.Metric)
				}
			}
		}
	}
}
