package promcheck

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/redis/go-redis/v9"

	"upsize/internal/jobs"
	"upsize/internal/metrics"
	"upsize/internal/obs"
	"upsize/internal/store"
	"upsize/internal/testredis"
)

// What UpsizeRedisUnreachable and the dashboard rely on, with the service's own collectors served as
// cmd/api and cmd/worker serve them (obs.Handler) and a Redis that refuses connections: the API's
// /metrics still answers 200 with every family but the backlog's (upsize_queue_tasks,
// upsize_backlog_work_seconds, upsize_work_done_seconds_total: read from Redis at scrape time),
// upsize_redis_up says 0 there and on a worker; those very scrapes make UpsizeRedisUnreachable fire, and
// nothing else (the KEDA query then returns nothing, and KEDA falls back: TestScalerQuery).
func TestRedisDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connections are refused, as when Redis is down
	dead := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { dead.Close() })
	live := testredis.Redis(t)

	// Each registry is filled alike, so that a family missing with Redis down is one the outage took.
	apiReg := func(rdb redis.UniversalClient) *prometheus.Registry {
		reg := obs.NewRegistry()
		m := metrics.NewAPI(reg, rdb, metrics.Backlog{Queues: jobs.Queues, PendingKey: jobs.PendingKey, ActiveKey: jobs.ActiveKey,
			WorkKey: store.DefaultKeys.Work(), WorkDoneKey: store.DefaultKeys.WorkDone()})
		m.HTTPInFlight.Set(2)
		m.HTTPDuration.WithLabelValues("/api/images/:id/upsize", "POST", "503", "web").Observe(0.01)
		m.Outcomes.WithLabelValues("unavailable", "queue_unavailable", "2x").Inc()
		m.Cancels.WithLabelValues("queued").Inc()
		m.CancelToAnswer.Observe(0.008)
		return reg
	}
	workerReg := func(rdb redis.UniversalClient) *prometheus.Registry {
		reg := obs.NewRegistry()
		m := metrics.NewWorker(reg, rdb, 3)
		m.Tasks.WithLabelValues(jobs.QueuePaid, "completed").Inc()
		m.QueueWait.WithLabelValues(jobs.QueuePaid, "2x", "png").Observe(0.004)
		return reg
	}
	deadAPI, liveAPI := serveMetrics(t, apiReg(dead)), serveMetrics(t, apiReg(live))
	deadWorker, liveWorker := serveMetrics(t, workerReg(dead)), serveMetrics(t, workerReg(live))

	t.Run("the API answers without the backlog", func(t *testing.T) {
		if v := gaugeOf(t, liveAPI, "upsize_redis_up"); v != 1 {
			t.Errorf("upsize_redis_up = %v with Redis up", v)
		}
		if v := gaugeOf(t, deadAPI, "upsize_redis_up"); v != 0 {
			t.Errorf("upsize_redis_up = %v with Redis down", v)
		}
		if n := len(liveAPI["upsize_queue_tasks"].GetMetric()); n != 2*len(jobs.Queues) {
			t.Errorf("with Redis up, upsize_queue_tasks has %d series, want pending and active of %d queues", n, len(jobs.Queues))
		}
		if n := len(liveAPI["upsize_backlog_work_seconds"].GetMetric()); n != len(jobs.Queues) {
			t.Errorf("with Redis up, upsize_backlog_work_seconds has %d series, want one per queue (%d)", n, len(jobs.Queues))
		}
		for _, name := range backlogFamilies {
			if _, ok := deadAPI[name]; ok {
				t.Errorf("with Redis down, %s is exposed: %v", name, deadAPI[name])
			}
		}
		sameFamilies(t, liveAPI, deadAPI, backlogFamilies...)
	})

	t.Run("a worker says Redis is down", func(t *testing.T) {
		if v := gaugeOf(t, liveWorker, "upsize_redis_up"); v != 1 {
			t.Errorf("upsize_redis_up = %v with Redis up", v)
		}
		if v := gaugeOf(t, deadWorker, "upsize_redis_up"); v != 0 {
			t.Errorf("upsize_redis_up = %v with Redis down", v)
		}
		if v := gaugeOf(t, deadWorker, "upsize_worker_concurrency"); v != 3 {
			t.Errorf("upsize_worker_concurrency = %v, want 3", v)
		}
		sameFamilies(t, liveWorker, deadWorker)
	})

	// The promise of obs.Handler the above relies on in general: a collector that fails costs its own
	// series, never the scrape, and the error is logged.
	t.Run("a failing collector loses only its own series", func(t *testing.T) {
		reg := obs.NewRegistry()
		reg.MustRegister(failingCollector{})
		metrics.NewWorker(reg, live, 2)
		var logs bytes.Buffer
		fams := serveMetricsLog(t, reg, slog.New(slog.NewJSONHandler(&logs, nil)))
		if _, ok := fams["upsize_test_failing"]; ok {
			t.Error("the failing collector's family is exposed")
		}
		for _, name := range []string{"upsize_worker_concurrency", "upsize_redis_up", "go_goroutines"} {
			if _, ok := fams[name]; !ok {
				t.Errorf("%s is missing beside a failing collector", name)
			}
		}
		if !strings.Contains(logs.String(), errFailing.Error()) {
			t.Errorf("the collector's error is not logged: %q", logs.String())
		}
	})

	// The alerts replayed on an hour of exactly these scrapes (every 15 s, up 1 since each answered).
	t.Run("the alerts on these scrapes", func(t *testing.T) {
		r := loadRule(t)
		ng := newEngine(t)
		start, end := time.Unix(0, 0), time.Unix(0, 0).Add(time.Hour)
		target := func(job, instance string) map[string]string {
			return map[string]string{"job": job, "instance": instance, "namespace": "upsize", "pod": instance}
		}
		type scraped struct {
			fams   map[string]*dto.MetricFamily
			labels map[string]string
		}
		for _, c := range []struct {
			what    string
			targets []scraped
			want    []string // the label sets UpsizeRedisUnreachable fires with; no other alert may fire
		}{
			{"Redis refuses every process", []scraped{
				{deadAPI, target(jobAPI, "a")}, {deadWorker, target(jobWorker, "w")},
			}, []string{`{job="upsize-api"}`, `{job="upsize-worker"}`}},
			{"one API replica of two cannot reach Redis", []scraped{
				{deadAPI, target(jobAPI, "a")}, {liveAPI, target(jobAPI, "b")}, {liveWorker, target(jobWorker, "w")},
			}, []string{`{job="upsize-api"}`}},
			{"Redis answers every process", []scraped{
				{liveAPI, target(jobAPI, "a")}, {liveWorker, target(jobWorker, "w")},
			}, nil},
		} {
			one := map[string]float64{}
			for _, tg := range c.targets {
				addScrape(one, familyList(tg.fams), tg.labels)
			}
			hour := make([]map[string]float64, int(time.Hour/scrapeInterval)+1)
			for i := range hour {
				hour[i] = one
			}
			st := promqltest.LoadedStorage(t, loadText(hour))
			var firingAlerts []string
			for _, q := range ruleQueries(r) {
				if f := firing(t, ng, st, q.alert, start, end); f[len(f)-1] {
					firingAlerts = append(firingAlerts, q.alert.Alert)
				}
			}
			wantAlerts := ""
			if c.want != nil {
				wantAlerts = "UpsizeRedisUnreachable"
			}
			if got := strings.Join(firingAlerts, " "); got != wantAlerts {
				t.Errorf("%s: after an hour %q fire, want %q", c.what, got, wantAlerts)
				continue
			}
			if c.want == nil {
				continue
			}
			rl := ruleNamed(t, r, "UpsizeRedisUnreachable")
			vec := instant(t, ng, st, rl.Expr.String(), end)
			if got := labelSets(vec); strings.Join(got, " ") != strings.Join(sortedCopy(c.want), " ") {
				t.Errorf("%s: UpsizeRedisUnreachable fires with %v, want %v", c.what, got, c.want)
			}
			checkAnnotationLabels(t, rl, vec)
		}
	})
}

// serveMetrics scrapes a registry through obs.Handler over HTTP, as Prometheus would, and requires a
// 200: a failed scrape would be up == 0 and no series at all.
func serveMetrics(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	return serveMetricsLog(t, reg, slog.New(slog.DiscardHandler))
}

func serveMetricsLog(t *testing.T, reg *prometheus.Registry, log *slog.Logger) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(obs.Handler(reg, log))
	defer srv.Close()
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("/metrics answered %d, not 200: Prometheus would record up == 0 and drop every series\n%.300s", res.StatusCode, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics: %v\n%.300s", err, body)
	}
	return fams
}

// backlogFamilies are the API's families read from Redis at scrape time: gone while it is down.
var backlogFamilies = []string{"upsize_queue_tasks", "upsize_backlog_work_seconds", "upsize_work_done_seconds_total"}

// sameFamilies: with Redis down a process exposes every family it exposes with Redis up, but except.
func sameFamilies(t *testing.T, up, down map[string]*dto.MetricFamily, except ...string) {
	t.Helper()
	for _, name := range sortedKeys(up) {
		if _, ok := down[name]; !ok && !slices.Contains(except, name) {
			t.Errorf("%s is gone with Redis down", name)
		}
	}
	for _, name := range sortedKeys(down) {
		if _, ok := up[name]; !ok {
			t.Errorf("%s appears only with Redis down", name)
		}
	}
	if len(up) < 10 {
		t.Errorf("only %d families with Redis up: %v", len(up), sortedKeys(up))
	}
}

func gaugeOf(t *testing.T, fams map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	mf, ok := fams[name]
	if !ok || len(mf.GetMetric()) != 1 {
		t.Fatalf("%s: want one series, got %v", name, mf)
	}
	return mf.GetMetric()[0].GetGauge().GetValue()
}

func familyList(fams map[string]*dto.MetricFamily) []*dto.MetricFamily {
	var out []*dto.MetricFamily
	for _, name := range sortedKeys(fams) {
		out = append(out, fams[name])
	}
	return out
}

func ruleNamed(t *testing.T, r *monitoringv1.PrometheusRule, name string) *monitoringv1.Rule {
	t.Helper()
	for _, q := range ruleQueries(r) {
		if q.alert.Alert == name {
			return q.alert
		}
	}
	t.Fatalf("no alert %s in %s", name, rulePath)
	return nil
}

var errFailing = errors.New("the failing collector failed")

// failingCollector fails every collection, as the API's backlog did before upsize_redis_up.
type failingCollector struct{}

var failingDesc = prometheus.NewDesc("upsize_test_failing", "Always fails.", nil, nil)

func (failingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- failingDesc }

func (failingCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(failingDesc, errFailing)
}
