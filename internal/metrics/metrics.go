// Package metrics defines every Prometheus metric the service exposes. Names follow Prometheus
// conventions (base units, _seconds, _bytes, _total); no label carries an unbounded value such as a user,
// image or request id.
package metrics

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Buckets, from the measured latencies (BENCHMARKS.md): queue waits and cancel signals are milliseconds,
// tasks and HTTP requests span milliseconds (small 2x) to a minute (8x of large images, 202 waits).
var (
	fastBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	slowBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60, 120}
)

const ns = "upsize"

// API is what the API process measures.
type API struct {
	HTTPDuration   *prometheus.HistogramVec
	HTTPInFlight   prometheus.Gauge
	Outcomes       *prometheus.CounterVec
	Cancels        *prometheus.CounterVec
	CancelToAnswer prometheus.Histogram
}

// Backlog names what the API reads of the backlog at scrape time: the queues, asynq's lists of each, and
// the registry's work counters (a hash queue → ms of queued and running work; a counter of completed ms).
type Backlog struct {
	Queues               []string
	PendingKey           func(string) string
	ActiveKey            func(string) string
	WorkKey, WorkDoneKey string
}

// NewAPI registers the API's metrics, the backlog of the queues in tasks and in estimated work (read
// from Redis at scrape time: a few LLENs and an HGETALL, not asynq's Lua inspector), whether Redis
// answers, and the Redis pool's statistics.
func NewAPI(reg prometheus.Registerer, rdb redis.UniversalClient, b Backlog) *API {
	m := &API{
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by route template, method, status code and X-Platform.",
			Buckets: slowBuckets,
		}, []string{"route", "method", "code", "platform"}),
		HTTPInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "http_requests_in_flight", Help: "HTTP requests being served, waiting upsizes included.",
		}),
		Outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "upsize_outcomes_total",
			Help: "Answers to POST /api/images/{id}/upsize: outcome completed, canceled, accepted (202), rejected (a rule of SPEC refused it) or failed, with the reason and the scale.",
		}, []string{"outcome", "reason", "scale"}),
		Cancels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "cancels_total",
			Help: "Cancel calls by result: queued, running (canceled while so), tombstone (before arrival), already_canceled, completed or failed (too late), invalid.",
		}, []string{"result"}),
		CancelToAnswer: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "cancel_to_answer_seconds",
			Help:    "Time from a cancel being recorded to the waiting upsize answering 409.",
			Buckets: fastBuckets,
		}),
	}
	reg.MustRegister(m.HTTPDuration, m.HTTPInFlight, m.Outcomes, m.Cancels, m.CancelToAnswer,
		&backlogCollector{rdb: rdb, b: b}, NewPoolCollector(rdb))
	return m
}

// backlogCollector exports pending and active tasks per queue, and whether Redis answered. It runs in
// the API only: workers scale on this figure and must not each query it. When Redis does not answer it
// says so in upsize_redis_up instead of failing the scrape, so every other series stays visible during
// an outage.
type backlogCollector struct {
	rdb redis.UniversalClient
	b   Backlog
}

var (
	backlogDesc = prometheus.NewDesc(ns+"_queue_tasks", "Tasks in each asynq queue, by state (pending: waiting for a worker; active: running).", []string{"queue", "state"}, nil)
	workDesc    = prometheus.NewDesc(ns+"_backlog_work_seconds", "Estimated worker time of the queued and running requests of each queue (policy.WorkModel): what the workers have ahead.", []string{"queue"}, nil)
	doneDesc    = prometheus.NewDesc(ns+"_work_done_seconds_total", "Estimated worker time of the requests completed, all workers together: its rate is the drain rate in work.", nil, nil)
)

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backlogDesc
	ch <- workDesc
	ch <- doneDesc
	ch <- redisUpDesc
}

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var work *redis.MapStringStringCmd
	var done *redis.StringCmd
	cmds, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, q := range c.b.Queues {
			p.LLen(ctx, c.b.PendingKey(q))
			p.LLen(ctx, c.b.ActiveKey(q))
		}
		work = p.HGetAll(ctx, c.b.WorkKey)
		done = p.Get(ctx, c.b.WorkDoneKey)
		return nil
	})
	if errors.Is(err, redis.Nil) { // no work completed yet: the counter does not exist
		err = nil
	}
	ch <- redisUp(err)
	if err != nil {
		return
	}
	for i, q := range c.b.Queues {
		ch <- prometheus.MustNewConstMetric(backlogDesc, prometheus.GaugeValue, float64(cmds[2*i].(*redis.IntCmd).Val()), q, "pending")
		ch <- prometheus.MustNewConstMetric(backlogDesc, prometheus.GaugeValue, float64(cmds[2*i+1].(*redis.IntCmd).Val()), q, "active")
		ms, _ := strconv.ParseFloat(work.Val()[q], 64) // only known queues: the label stays a fixed set
		ch <- prometheus.MustNewConstMetric(workDesc, prometheus.GaugeValue, max(ms, 0)/1000, q)
	}
	doneMS, _ := strconv.ParseFloat(done.Val(), 64)
	ch <- prometheus.MustNewConstMetric(doneDesc, prometheus.CounterValue, doneMS/1000)
}

var redisUpDesc = prometheus.NewDesc(ns+"_redis_up", "1 when this process's last command to Redis at scrape time succeeded, 0 when it failed.", nil, nil)

func redisUp(err error) prometheus.Metric {
	v := 1.0
	if err != nil {
		v = 0
	}
	return prometheus.MustNewConstMetric(redisUpDesc, prometheus.GaugeValue, v)
}

// pingCollector exports upsize_redis_up for a worker, from a PING at scrape time.
type pingCollector struct{ rdb redis.UniversalClient }

func (pingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- redisUpDesc }

func (p pingCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ch <- redisUp(p.rdb.Ping(ctx).Err())
}

// poolCollector exports a process's Redis connection pool statistics.
type poolCollector struct{ rdb redis.UniversalClient }

// NewPoolCollector exports rdb's pool statistics.
func NewPoolCollector(rdb redis.UniversalClient) prometheus.Collector { return poolCollector{rdb} }

var (
	poolConns    = prometheus.NewDesc(ns+"_redis_pool_connections", "Redis connections in this process's pool, by state.", []string{"state"}, nil)
	poolHits     = prometheus.NewDesc(ns+"_redis_pool_hits_total", "Times a free connection was found in the pool.", nil, nil)
	poolMisses   = prometheus.NewDesc(ns+"_redis_pool_misses_total", "Times no free connection was in the pool.", nil, nil)
	poolTimeouts = prometheus.NewDesc(ns+"_redis_pool_timeouts_total", "Times waiting for a connection timed out.", nil, nil)
)

func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolConns
	ch <- poolHits
	ch <- poolMisses
	ch <- poolTimeouts
}

func (p poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := p.rdb.PoolStats()
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.TotalConns), "total")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.IdleConns), "idle")
	ch <- prometheus.MustNewConstMetric(poolHits, prometheus.CounterValue, float64(s.Hits))
	ch <- prometheus.MustNewConstMetric(poolMisses, prometheus.CounterValue, float64(s.Misses))
	ch <- prometheus.MustNewConstMetric(poolTimeouts, prometheus.CounterValue, float64(s.Timeouts))
}

// Worker is what a worker process measures.
type Worker struct {
	Concurrency    prometheus.Gauge
	QueueWait      *prometheus.HistogramVec
	Stage          *prometheus.HistogramVec
	InProgress     prometheus.Gauge
	Bytes          *prometheus.CounterVec
	CreditsCharged prometheus.Counter
	Tasks          *prometheus.CounterVec
	CancelToStop   prometheus.Histogram
}

// NewWorker registers the worker's metrics, whether Redis answers, and its Redis pool's statistics.
func NewWorker(reg prometheus.Registerer, rdb redis.UniversalClient, concurrency int) *Worker {
	labels := []string{"queue", "scale", "format"}
	m := &Worker{
		Concurrency: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "worker_concurrency", Help: "Upsize tasks this worker runs at once at most (WORKER_CONCURRENCY).",
		}),
		QueueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "task_queue_wait_seconds",
			Help:    "Time from a request's admission (its task enqueued) to a worker starting it, by queue (paid or free), scale and format.",
			Buckets: append([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}, slowBuckets[8:]...),
		}, labels),
		Stage: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "task_stage_seconds",
			Help: "Time of each stage of an upsize task: read (source bytes), decode_resize_encode (one streamed " +
				"libvips evaluation), write (time inside the blob store's writer during it), total (the whole task run).",
			Buckets: slowBuckets,
		}, []string{"stage", "scale", "format"}),
		InProgress: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "tasks_in_progress", Help: "Upsize tasks this worker is running.",
		}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "task_bytes_total", Help: "Image bytes read (sources) and written (results).",
		}, []string{"direction"}),
		CreditsCharged: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "credits_charged_total", Help: "Credits charged for completed upsizes.",
		}),
		Tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "task_runs_total",
			Help: "Runs of upsize tasks by queue and outcome: completed, canceled, failed, skipped (already canceled or finished), retry.",
		}, []string{"queue", "outcome"}),
		CancelToStop: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "cancel_to_stop_seconds",
			Help:    "Time from a cancel being recorded to the worker's libvips work on it stopping.",
			Buckets: fastBuckets,
		}),
	}
	m.Concurrency.Set(float64(concurrency))
	reg.MustRegister(m.Concurrency, m.QueueWait, m.Stage, m.InProgress, m.Bytes, m.CreditsCharged, m.Tasks, m.CancelToStop,
		pingCollector{rdb}, NewPoolCollector(rdb))
	return m
}
