package promcheck

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/storage"

	"upsize/internal/imageops"
	"upsize/internal/jobs"
	"upsize/internal/policy"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
)

// scrapeInterval is the ServiceMonitors' interval; the real run's gathers stand for scrapes this far apart.
const scrapeInterval = 15 * time.Second

// realRun is what the API and a worker exposed while serving real traffic.
type realRun struct {
	exposed map[string]*dto.MetricFamily            // e.Exposed() of every environment, by name
	byJob   map[string]map[string]*dto.MetricFamily // families of the API (jobAPI) and of the worker (jobWorker)
	load    string                                  // the gathers as promqltest samples, scrapeInterval apart
	evalAt  time.Time                               // the last gather
}

// target is one scraped process: its registry and the labels the ServiceMonitor gives its series.
type scrapeTarget struct {
	reg    *prometheus.Registry
	labels map[string]string
}

// serveTraffic runs the API and a worker on Redis with real libvips and drives traffic that produces
// every family and label value the dashboard and the alerts use: uploads, small upsizes of 2x and 4x by
// a paid user and of 2x by a free one (so that both small queues have waits and runs), three large ones
// of the paid user open at once (the first two in upsize_paid, the third in upsize_paid_more; their
// pixels are a small image's), a
// rejection, a cancel of a running task, a cancel too late; a second API without worker answers 202 at
// its wait deadline and then 429 queue_full. The API and the worker are gathered three times, before and
// after each of two rounds, as three scrapes.
func serveTraffic(t *testing.T) *realRun {
	t.Helper()
	var hold atomic.Bool                   // set: the next task blocks until canceled, so that a cancel finds it running
	var gate atomic.Pointer[chan struct{}] // set: large tasks wait for it to close, so that they stay open together
	// A large task's class and queue come from the work model's estimate of its upload (at admission);
	// its pixels are a small image's here, since encoding 20 MP would only slow the run.
	standIn := testimg.EncodePNG(testimg.Gradient(16, 16))
	op := func(ctx context.Context, src []byte, w io.Writer, p imageops.Params) (imageops.Result, error) {
		if hold.Load() {
			select {
			case <-ctx.Done():
				return imageops.Result{}, ctx.Err()
			case <-time.After(20 * time.Second):
				return imageops.Result{}, fmt.Errorf("the cancel never reached the running task")
			}
		}
		if g := gate.Load(); g != nil && len(src) > 16<<10 {
			select {
			case <-*g:
			case <-ctx.Done():
				return imageops.Result{}, ctx.Err()
			}
			src = standIn
		}
		return imageops.Upsize(ctx, src, w, p)
	}
	e := testenv.New(t, testenv.Options{Upsize: op, NoWorker: true})
	w := e.StartWorker()
	e.Configure()
	u := e.NewUser("paid", 1000)
	free := e.NewUser("free", 100)

	targets := []scrapeTarget{
		{e.Metrics, map[string]string{"job": jobAPI, "instance": "10.0.0.1:8080", "namespace": "upsize", "pod": "upsize-api-0"}},
		{w.Metrics, map[string]string{"job": jobWorker, "instance": "10.0.0.2:9090", "namespace": "upsize", "pod": "upsize-worker-0"}},
	}
	var scrapes []map[string]float64
	scrape := func() {
		s := map[string]float64{}
		for _, tg := range targets {
			mfs, err := tg.reg.Gather()
			if err != nil {
				t.Fatalf("gather %s: %v", tg.labels["job"], err)
			}
			addScrape(s, mfs, tg.labels)
		}
		scrapes = append(scrapes, s)
	}
	stops := func() float64 { // canceled tasks the worker has reported
		mfs, _ := w.Metrics.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "upsize_cancel_to_stop_seconds" {
				return float64(mf.GetMetric()[0].GetHistogram().GetSampleCount())
			}
		}
		return 0
	}

	side := largeSide(t)
	big := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(side, side)))

	scrape()
	for round := 1; round <= 2; round++ {
		ctx := context.Background()
		id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
		r2 := fmt.Sprintf("round%d-2x", round)
		e.Want(e.Upsize(ctx, u.Key, id, "2x", r2), 201, "")
		e.Want(e.Upsize(ctx, u.Key, id, "4x", fmt.Sprintf("round%d-4x", round)), 201, "")
		e.Want(e.Cancel(u.Key, r2), 409, "request_already_completed")
		e.Want(e.Upsize(ctx, u.Key, 999999, "2x", ""), 404, "no_input_image (999999)")
		fid := e.UploadOK(free.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
		e.Want(e.Upsize(ctx, free.Key, fid, "2x", fmt.Sprintf("round%d-free", round)), 201, "")

		// Three large upsizes of one user open at once: its first two take the first lane (upsize_paid), the
		// third the "more" one (upsize_paid_more). Their tasks wait for the gate until all are admitted.
		g := make(chan struct{})
		gate.Store(&g)
		large := make(chan *testenv.Resp, 3)
		for i := range 3 {
			rid := fmt.Sprintf("round%d-large%d", round, i)
			go func() { large <- e.Upsize(ctx, u.Key, big, "8x", rid) }()
			waitOpen(t, e, u.Key, rid)
		}
		close(g)
		for range 3 {
			e.Want(<-large, 201, "")
		}
		gate.Store(nil)
		if got := queuesRun(w.Metrics); !got[jobs.QueuePaid] || !got[jobs.QueuePaidMore] || !got[jobs.QueuePaidSmall] || !got[jobs.QueueFreeSmall] {
			t.Fatalf("after round %d the worker ran tasks of %v; want %s, %s, %s and %s", round, sortedKeys(got),
				jobs.QueuePaidSmall, jobs.QueueFreeSmall, jobs.QueuePaid, jobs.QueuePaidMore)
		}

		rc := fmt.Sprintf("round%d-cancel", round)
		hold.Store(true)
		done := make(chan *testenv.Resp, 1)
		go func() { done <- e.Upsize(ctx, u.Key, id, "4x", rc) }()
		waitRunning(t, e, u.Key, rc)
		e.Want(e.Cancel(u.Key, rc), 200, "")
		e.Want(<-done, 409, "user_canceled_request")
		hold.Store(false)
		deadline := time.Now().Add(10 * time.Second)
		for stops() < float64(round) {
			if time.Now().After(deadline) {
				t.Fatal("the worker never reported the canceled task")
			}
			time.Sleep(10 * time.Millisecond)
		}
		scrape()
	}

	// 202 at the wait deadline, then 429 once more than QUEUE_MAX_BACKLOG tasks wait.
	full := testenv.New(t, testenv.Options{NoWorker: true, WaitTimeout: 50 * time.Millisecond, QueueMaxBacklog: 1})
	full.Configure()
	fu := full.NewUser("free", 100)
	fid := full.UploadOK(fu.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	full.Want(full.Upsize(context.Background(), fu.Key, fid, "2x", "wait-1"), 202, "")
	full.Want(full.Upsize(context.Background(), fu.Key, fid, "2x", "wait-2"), 202, "")
	full.Want(full.Upsize(context.Background(), fu.Key, fid, "2x", "wait-3"), 429, "queue_full")

	run := &realRun{
		exposed: map[string]*dto.MetricFamily{},
		byJob:   map[string]map[string]*dto.MetricFamily{jobAPI: {}, jobWorker: {}},
		evalAt:  time.Unix(0, 0).Add(time.Duration(len(scrapes)-1) * scrapeInterval),
	}
	for _, env := range []*testenv.Env{e, full} {
		for name, mf := range env.Exposed() {
			run.exposed[name] = merge(run.exposed[name], mf)
		}
	}
	for job, regs := range map[string][]*prometheus.Registry{jobAPI: {e.Metrics, full.Metrics}, jobWorker: {w.Metrics}} {
		for _, reg := range regs {
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				run.byJob[job][mf.GetName()] = merge(run.byJob[job][mf.GetName()], mf)
			}
		}
	}
	run.load = loadText(scrapes)
	return run
}

// largeSide is the side of a square PNG whose 8x the work model estimates at a quarter more than
// jobs.SmallWork: a large task.
func largeSide(t *testing.T) int {
	t.Helper()
	m := policy.DefaultWork
	outMP := float64(jobs.SmallWork*5/4-m.Fixed) / float64(m.PerMP["png"])
	side := int(math.Ceil(math.Sqrt(outMP * 1e6 / 64)))
	if w := m.Estimate("png", int64(side*8)*int64(side*8)); w <= jobs.SmallWork {
		t.Fatalf("an 8x of %d² is estimated at %s, not above jobs.SmallWork %s", side, w, jobs.SmallWork)
	}
	return side
}

// waitOpen waits until the request is admitted (queued or running).
func waitOpen(t *testing.T, e *testenv.Env, key, rid string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := e.RequestState(key, rid)
		if st := r.JSON()["state"]; r.Status == 200 && (st == "queued" || st == "running") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s was never admitted: %s", rid, r)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// queuesRun are the queues of which a worker has reported task runs.
func queuesRun(reg *prometheus.Registry) map[string]bool {
	out := map[string]bool{}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "upsize_task_runs_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "queue" {
					out[l.GetValue()] = true
				}
			}
		}
	}
	return out
}

func waitRunning(t *testing.T, e *testenv.Env, key, rid string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := e.RequestState(key, rid)
		if r.Status == 200 && r.JSON()["state"] == "running" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s never ran: %s", rid, r)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// merge keeps every metric (label set) of two gathers of one family.
func merge(a, b *dto.MetricFamily) *dto.MetricFamily {
	if a == nil {
		return b
	}
	return &dto.MetricFamily{Name: a.Name, Help: a.Help, Type: a.Type, Unit: a.Unit,
		Metric: append(append([]*dto.Metric{}, a.Metric...), b.Metric...)}
}

// seriesKey writes a series in PromQL's notation, labels sorted.
func seriesKey(name string, ls map[string]string) string {
	keys := sortedKeys(ls)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Quote(ls[k])
	}
	return name + "{" + strings.Join(parts, ", ") + "}"
}

// addScrape adds what one successful scrape of a target stores: its series and up 1.
func addScrape(out map[string]float64, mfs []*dto.MetricFamily, target map[string]string) {
	addSamples(out, mfs, target)
	out[seriesKey("up", target)] = 1
}

// addSamples adds the series a scrape of the families would store, with the target's labels.
func addSamples(out map[string]float64, mfs []*dto.MetricFamily, target map[string]string) {
	for _, mf := range mfs {
		name := mf.GetName()
		for _, m := range mf.GetMetric() {
			ls := map[string]string{}
			for k, v := range target {
				ls[k] = v
			}
			for _, l := range m.GetLabel() {
				ls[l.GetName()] = l.GetValue()
			}
			with := func(k, v string) map[string]string {
				c := map[string]string{k: v}
				for k2, v2 := range ls {
					c[k2] = v2
				}
				return c
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[seriesKey(name, ls)] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[seriesKey(name, ls)] = m.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				out[seriesKey(name, ls)] = m.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					if !math.IsInf(b.GetUpperBound(), 1) {
						out[seriesKey(name+"_bucket", with("le", strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)))] = float64(b.GetCumulativeCount())
					}
				}
				out[seriesKey(name+"_bucket", with("le", "+Inf"))] = float64(h.GetSampleCount())
				out[seriesKey(name+"_sum", ls)] = h.GetSampleSum()
				out[seriesKey(name+"_count", ls)] = float64(h.GetSampleCount())
			case dto.MetricType_SUMMARY:
				s := m.GetSummary()
				for _, q := range s.GetQuantile() {
					out[seriesKey(name, with("quantile", strconv.FormatFloat(q.GetQuantile(), 'g', -1, 64)))] = q.GetValue()
				}
				out[seriesKey(name+"_sum", ls)] = s.GetSampleSum()
				out[seriesKey(name+"_count", ls)] = float64(s.GetSampleCount())
			}
		}
	}
}

// loadText writes scrapes as a promqltest load command; a series missing from a scrape is "_".
func loadText(scrapes []map[string]float64) string {
	all := map[string]bool{}
	for _, s := range scrapes {
		for k := range s {
			all[k] = true
		}
	}
	keys := sortedKeys(all)
	var b strings.Builder
	fmt.Fprintf(&b, "load %s\n", scrapeInterval)
	for _, k := range keys {
		b.WriteString("  " + k)
		for _, s := range scrapes {
			v, ok := s[k]
			switch {
			case !ok:
				b.WriteString(" _")
			case math.IsNaN(v):
				b.WriteString(" NaN")
			case math.IsInf(v, 0):
				b.WriteString(" " + strings.TrimPrefix(strconv.FormatFloat(v, 'g', -1, 64), "+"))
			default:
				b.WriteString(" " + strconv.FormatFloat(v, 'g', -1, 64))
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// resolve finds the family a series name belongs to: the name itself, or a histogram's _bucket, _sum
// and _count, or a summary's _sum and _count.
func resolve(name string, fams map[string]*dto.MetricFamily) (*dto.MetricFamily, string, bool) {
	if mf, ok := fams[name]; ok {
		// A classic histogram or a summary has no series of its bare name (a summary's are its quantiles).
		return mf, "", mf.GetType() != dto.MetricType_HISTOGRAM
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		mf, ok := fams[base]
		switch {
		case !ok:
		case mf.GetType() == dto.MetricType_HISTOGRAM, mf.GetType() == dto.MetricType_SUMMARY && suffix != "_bucket":
			return mf, suffix, true
		}
	}
	return nil, "", false
}

// labelValues are the values each label of a family took.
func labelValues(mf *dto.MetricFamily) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if out[l.GetName()] == nil {
				out[l.GetName()] = map[string]bool{}
			}
			out[l.GetName()][l.GetValue()] = true
		}
	}
	return out
}

func newEngine(t *testing.T) *promql.Engine {
	return promqltest.NewTestEngineWithOpts(t, promql.EngineOpts{
		MaxSamples:    1_000_000,
		Timeout:       time.Minute,
		LookbackDelta: 5 * time.Minute,
		// A subquery without a step ([5m:]) takes the global evaluation interval; one scrape interval
		// here so that the three scrapes of the real run give it points.
		NoStepSubqueryIntervalFn: func(int64) int64 { return scrapeInterval.Milliseconds() },
		Parser:                   promParser,
	})
}

// instant evaluates an expression at ts.
func instant(t *testing.T, ng *promql.Engine, st storage.Queryable, expr string, ts time.Time) promql.Vector {
	t.Helper()
	q, err := ng.NewInstantQuery(context.Background(), st, nil, expr, ts)
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	defer q.Close()
	res := q.Exec(context.Background())
	if res.Err != nil {
		t.Fatalf("%s: %v", expr, res.Err)
	}
	switch v := res.Value.(type) {
	case promql.Vector:
		return v
	case promql.Scalar:
		return promql.Vector{{F: v.V, T: v.T}}
	default:
		t.Fatalf("%s: a %T", expr, res.Value)
		return nil
	}
}

// Against a real run of the API and a worker: every metric the dashboard and the alerts use is exposed
// (by the process their job= names), with the labels they match on and the values they compare to;
// every panel shows data; no alert fires on healthy traffic; the docs list every metric.
func TestAgainstRealService(t *testing.T) {
	_, _, ps := everything(t)
	run := serveTraffic(t)

	t.Run("metrics and labels exist", func(t *testing.T) {
		seen := map[string]bool{}
		for _, p := range ps {
			for _, s := range selectors(p.ast) {
				if s.name == "up" { // Prometheus's own, one per target
					continue
				}
				seen[s.name] = true
				mf, suffix, ok := resolve(s.name, run.exposed)
				if !ok {
					t.Errorf("%s: %s is not a series the API or the worker exposes", p.where, s.name)
					continue
				}
				values := labelValues(mf)
				for _, m := range s.matchers {
					if m.Name == "job" {
						var found bool
						for _, job := range []string{jobAPI, jobWorker} {
							if _, _, ok := resolve(s.name, run.byJob[job]); ok && m.Matches(job) {
								found = true
							}
						}
						if !found {
							t.Errorf("%s: %s{%s}: no process of that job exposes %s", p.where, s.name, m, s.name)
						}
					}
					if targetLabels[m.Name] || m.Name == "le" && suffix == "_bucket" ||
						m.Name == "quantile" && suffix == "" && mf.GetType() == dto.MetricType_SUMMARY {
						continue
					}
					vals, ok := values[m.Name]
					if !ok {
						t.Errorf("%s: %s has no label %q (it has %v)", p.where, s.name, m.Name, sortedKeys(values))
						continue
					}
					if m.Type == labels.MatchEqual && m.Value != "" && !vals[m.Value] {
						t.Errorf("%s: %s{%s}: the run saw only %v", p.where, s.name, m, sortedKeys(vals))
					}
				}
			}
		}
		if len(seen) < 15 {
			t.Errorf("only %d distinct metrics used: %v", len(seen), sortedKeys(seen))
		}
	})

	// sum by (queue) over a family without queue gives one series without the label, silently; so does
	// on (queue). Each label an expression groups or matches by must be on a series it selects there.
	t.Run("grouping labels exist", func(t *testing.T) {
		var checked int
		for _, p := range ps {
			for _, g := range groupings(p.ast) {
				checked++
				var found bool
				for _, s := range selectors(g.in) {
					found = found || carries(s.name, g.label, run.exposed)
				}
				if !found {
					t.Errorf("%s: %s (%s): no series selected there has the label %q:\n%s", p.where, g.how, g.in, g.label, p.text)
				}
			}
		}
		if checked < 20 {
			t.Errorf("only %d grouping labels checked", checked)
		}
	})

	ng := newEngine(t)
	st := promqltest.LoadedStorage(t, run.load)

	t.Run("every panel has data", func(t *testing.T) {
		for _, p := range ps {
			if p.alert != nil {
				continue
			}
			vec := instant(t, ng, st, p.text, run.evalAt)
			var number bool
			for _, s := range vec {
				number = number || !math.IsNaN(s.F)
			}
			if !number {
				t.Errorf("%s: no data (%v) from a service that served traffic:\n%s", p.where, vec, p.text)
			}
			for _, name := range legendLabels(p.legend) {
				var carried bool
				for _, s := range vec {
					carried = carried || s.Metric.Get(name) != ""
				}
				if !carried {
					t.Errorf("%s: the legend %q names %s, which no series of the result carries: %v", p.where, p.legend, name, vec)
				}
			}
		}
	})

	// KEDA refuses a result of several series.
	t.Run("the KEDA query gives one number", func(t *testing.T) {
		for _, p := range ps {
			if !p.scaler {
				continue
			}
			if vec := instant(t, ng, st, p.text, run.evalAt); len(vec) != 1 || math.IsNaN(vec[0].F) {
				t.Errorf("%s: %v, want one number", p.where, vec)
			}
		}
	})

	t.Run("no alert fires on healthy traffic", func(t *testing.T) {
		for _, p := range ps {
			if p.alert == nil {
				continue
			}
			if vec := instant(t, ng, st, p.text, run.evalAt); len(vec) > 0 {
				t.Errorf("%s fires on a healthy service: %v", p.where, vec)
			}
		}
	})

	t.Run("docs list every metric", func(t *testing.T) {
		docs, err := os.ReadFile(docsPath)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for name := range run.exposed {
			if strings.HasPrefix(name, "upsize_") {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		if len(names) < 15 {
			t.Fatalf("only %d upsize_ families exposed: %v", len(names), names)
		}
		for _, name := range names {
			if !strings.Contains(string(docs), "`"+name+"`") {
				t.Errorf("docs/observability.md does not list `%s`", name)
			}
		}
	})
}

// grouping is a label an expression aggregates by (by (...)) or matches on (on (...)), and the operand
// whose series must carry it.
type grouping struct {
	label string
	in    parser.Expr
	how   string // for messages
}

func groupings(e parser.Expr) []grouping {
	var out []grouping
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch x := n.(type) {
		case *parser.AggregateExpr:
			if !x.Without {
				for _, l := range x.Grouping {
					out = append(out, grouping{l, x.Expr, x.Op.String() + " by " + l})
				}
			}
		case *parser.BinaryExpr:
			if vm := x.VectorMatching; vm != nil && vm.On {
				for _, l := range vm.MatchingLabels {
					out = append(out, grouping{l, x.LHS, "on " + l + ", left"}, grouping{l, x.RHS, "on " + l + ", right"})
				}
			}
		}
		return nil
	})
	return out
}

// carries tells whether the series of name can have the label: a target's label, le on a bucket, or a
// label the run exposed on its family.
func carries(name, label string, fams map[string]*dto.MetricFamily) bool {
	if targetLabels[label] {
		return true
	}
	mf, suffix, ok := resolve(name, fams)
	if !ok {
		return false
	}
	if label == "le" && suffix == "_bucket" {
		return true
	}
	_, ok = labelValues(mf)[label]
	return ok
}

var legendRe = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)

// legendLabels are the labels a legendFormat shows ({{queue}}).
func legendLabels(legend string) []string {
	var out []string
	for _, m := range legendRe.FindAllStringSubmatch(legend, -1) {
		out = append(out, m[1])
	}
	return out
}
