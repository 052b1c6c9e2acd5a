package metrics

import "github.com/prometheus/client_golang/prometheus"

// Janitor is what the blob janitor (package janitor) measures, in the process that runs it.
type Janitor struct {
	Removed      *prometheus.CounterVec // kind: temp, orphan
	RemovedBytes *prometheus.CounterVec // kind: temp, orphan
	Runs         *prometheus.CounterVec // result: ok, locked, error
	LastSuccess  prometheus.Gauge
}

// Kinds of garbage, and results of a run.
const (
	JanitorTemp   = "temp"   // an unfinished write left by a crash
	JanitorOrphan = "orphan" // an image's bytes without an image record

	JanitorOK     = "ok"
	JanitorLocked = "locked" // another replica was running the janitor
	JanitorError  = "error"
)

// NewJanitor registers the janitor's metrics; every series exists from the start, at 0.
func NewJanitor(reg prometheus.Registerer) *Janitor {
	m := &Janitor{
		Removed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "janitor_removed_total",
			Help: "Blob store objects removed by the janitor: temp (an unfinished write left by a crash) or orphan (an image's bytes without an image record).",
		}, []string{"kind"}),
		RemovedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "janitor_removed_bytes_total", Help: "Bytes of the objects the janitor removed, by kind (temp, orphan).",
		}, []string{"kind"}),
		Runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "janitor_runs_total",
			Help: "Janitor runs started by this process, by result: ok, locked (another replica was running it), error.",
		}, []string{"result"}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "janitor_last_success_timestamp_seconds",
			Help: "Unix time at which this process last finished a janitor run without errors (0: never).",
		}),
	}
	for _, k := range []string{JanitorTemp, JanitorOrphan} {
		m.Removed.WithLabelValues(k)
		m.RemovedBytes.WithLabelValues(k)
	}
	for _, r := range []string{JanitorOK, JanitorLocked, JanitorError} {
		m.Runs.WithLabelValues(r)
	}
	reg.MustRegister(m.Removed, m.RemovedBytes, m.Runs, m.LastSuccess)
	return m
}
