package main

import (
	"fmt"
	"math"
	"slices"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// outcome is what became of one upsize request.
type outcome string

const (
	completed          outcome = "completed"           // 201
	canceled           outcome = "canceled"            // 409 user_canceled_request
	queueFull          outcome = "queue_full"          // 429
	noCredit           outcome = "no_credit"           // 402
	rejected           outcome = "rejected"            // another 4xx
	serverError        outcome = "server_error"        // 5xx
	transportError     outcome = "transport_error"     // no HTTP answer
	unexpected         outcome = "unexpected"          // an answer outside the contract (1xx, 200, 3xx)
	acceptedCompleted  outcome = "accepted_completed"  // 202, then completed
	acceptedCanceled   outcome = "accepted_canceled"   // 202, then canceled
	acceptedFailed     outcome = "accepted_failed"     // 202, then failed
	acceptedUnresolved outcome = "accepted_unresolved" // 202, and no final state within -follow-timeout
	interrupted        outcome = "interrupted"         // cut short by Ctrl-C or -max-duration

	accepted outcome = "accepted" // a 202 not followed yet: never an outcome of the report
)

// outcomes is the reports' order.
var outcomes = []outcome{completed, acceptedCompleted, canceled, acceptedCanceled, queueFull, noCredit,
	rejected, acceptedFailed, serverError, transportError, unexpected, acceptedUnresolved, interrupted}

// succeeded outcomes are those the contract promises: a new image, or a cancel honoured.
func (o outcome) succeeded() bool { return o.completed() || o == canceled || o == acceptedCanceled }

// completed outcomes gave a new image.
func (o outcome) completed() bool { return o == completed || o == acceptedCompleted }

// request is one upsize of the run and what became of it.
type request struct {
	RequestID     string        `json:"requestId"`
	Group         string        `json:"group,omitempty"` // a scenario's role of the request
	UserID        int64         `json:"userId,omitempty"`
	Plan          string        `json:"plan"` // the user's plan
	Size          string        `json:"size"`
	Format        string        `json:"format"`
	Scale         string        `json:"scale"`
	CancelPlanned bool          `json:"cancelPlanned"`
	Sent          time.Time     `json:"sent"`
	Latency       time.Duration `json:"latencyNs"` // from sending to the outcome; for a 202, to its final state being seen
	FirstCode     int           `json:"firstCode"` // 0: no HTTP answer
	Outcome       outcome       `json:"outcome"`
	Reason        string        `json:"reason,omitempty"`
	// For a 202: how it was followed (followPoll, followSSE, followFallback), and with an event stream the
	// time from the 202 to its first event and to its final event (0: none came), and how many times the
	// stream was opened again.
	FollowedBy string        `json:"followedBy,omitempty"`
	FirstEvent time.Duration `json:"firstEventNs,omitempty"`
	FinalEvent time.Duration `json:"finalEventNs,omitempty"`
	Reconnects int           `json:"reconnects,omitempty"`
}

// runResult is everything a run collected.
type runResult struct {
	Cfg        *config
	Started    time.Time
	Finished   time.Time
	StopReason string
	Requests   []request
	LastSent   time.Time
	Samples    []sample
	Metrics    vegeta.Metrics
	Plans      []*plan
}

// report is what a run found; it is written as JSON and as Markdown.
type report struct {
	Target       string         `json:"target"`
	Mode         string         `json:"mode"`
	Seed         uint64         `json:"seed"`
	Started      time.Time      `json:"started"`
	Finished     time.Time      `json:"finished"`
	StopReason   string         `json:"stopReason"`
	Requests     int            `json:"requests"`
	AchievedRate float64        `json:"achievedRatePerSec"`
	ErrorRatio   float64        `json:"errorRatio"`
	Outcomes     []outcomeStats `json:"outcomes"`
	FirstAnswers firstAnswers   `json:"firstAnswers"`
	Follow       followStats    `json:"follow"`
	Backlog      backlogStats   `json:"backlog"`
	Cancels      cancelStats    `json:"cancels"`
	Chart        string         `json:"chart"`
	// Scenario is what a -scenario run measured.
	Scenario *scenarioReport `json:"scenario,omitempty"`
	// PerRequest is every request in sending order, to break the run down by plan, size or scale later.
	PerRequest []request `json:"perRequest"`
}

type outcomeStats struct {
	Outcome outcome        `json:"outcome"`
	Count   int            `json:"count"`
	P50Ms   float64        `json:"p50Ms"`
	P95Ms   float64        `json:"p95Ms"`
	P99Ms   float64        `json:"p99Ms"`
	MaxMs   float64        `json:"maxMs"`
	Reasons map[string]int `json:"reasons,omitempty"`
}

// firstAnswers is vegeta's view of the upsizes: their first HTTP answers, before any 202 is followed.
type firstAnswers struct {
	StatusCodes map[string]int `json:"statusCodes"`
	SendSeconds float64        `json:"sendSeconds"` // from the first request sent to the last
	P50Ms       float64        `json:"p50Ms"`
	P95Ms       float64        `json:"p95Ms"`
	P99Ms       float64        `json:"p99Ms"`
	MaxMs       float64        `json:"maxMs"`
}

// followStats is how the 202 answers were followed (-follow).
type followStats struct {
	Mode      string `json:"mode"`      // -follow: poll or sse
	Followed  int    `json:"followed"`  // 202 answers followed
	SSE       int    `json:"sse"`       // … by their event stream alone
	Fallbacks int    `json:"fallbacks"` // … by their event stream, then by polling
	// Reconnects counts the event streams opened again, over every request.
	Reconnects int `json:"reconnects"`
	// FirstEvent runs from the 202 to the first event of its stream (heartbeats are not events), over the
	// requests that had one; FinalEvent to the event with the final state, over those whose outcome it gave.
	// Both are absent when no stream sent an event.
	FirstEvent *spanStats `json:"firstEvent,omitempty"`
	FinalEvent *spanStats `json:"finalEvent,omitempty"`
}

// spanStats summarises durations: nearest-rank percentiles, as the outcomes'.
type spanStats struct {
	Count int     `json:"count"`
	P50Ms float64 `json:"p50Ms"`
	P95Ms float64 `json:"p95Ms"`
	MaxMs float64 `json:"maxMs"`
}

type backlogStats struct {
	Peak    int64 `json:"peak"`
	Drained bool  `json:"drained"`
	// DrainSeconds runs from the last request sent to the first sample with an empty backlog and none
	// of the run's requests open; null when that did not happen.
	DrainSeconds *float64 `json:"drainSeconds"`
	Samples      []sample `json:"samples"`
}

type cancelStats struct {
	Planned int            `json:"planned"`
	Sent    int            `json:"sent"`
	Answers map[string]int `json:"answers"`
}

func buildReport(r runResult) report {
	rep := report{
		Target:       r.Cfg.Base.String(),
		Mode:         mode(r.Cfg),
		Seed:         r.Cfg.Seed,
		Started:      r.Started,
		Finished:     r.Finished,
		StopReason:   r.StopReason,
		Requests:     len(r.Requests),
		AchievedRate: r.Metrics.Rate,
		ErrorRatio:   errorRatio(r.Requests),
		Outcomes:     outcomeTable(r.Requests),
		FirstAnswers: firstAnswers{
			StatusCodes: r.Metrics.StatusCodes,
			SendSeconds: r.Metrics.Duration.Seconds(),
			P50Ms:       ms(r.Metrics.Latencies.P50),
			P95Ms:       ms(r.Metrics.Latencies.P95),
			P99Ms:       ms(r.Metrics.Latencies.P99),
			MaxMs:       ms(r.Metrics.Latencies.Max),
		},
		Follow:     followTable(r.Cfg.Follow, r.Requests),
		Backlog:    backlogStats{Peak: peak(r.Samples), Samples: r.Samples},
		Cancels:    cancelTable(r.Plans),
		PerRequest: slices.SortedFunc(slices.Values(r.Requests), func(a, b request) int { return a.Sent.Compare(b.Sent) }),
	}
	if d, ok := drainTime(r.Samples, r.LastSent); ok {
		s := d.Seconds()
		rep.Backlog.Drained, rep.Backlog.DrainSeconds = true, &s
	}
	return rep
}

func mode(cfg *config) string {
	switch cfg.Scenario {
	case scenarioHeavyBurst:
		return fmt.Sprintf("scenario %s (%d × %s, a stream of %s)", cfg.Scenario, cfg.HeavyN, cfg.Heavy, cfg.Small)
	case scenarioFairness:
		return fmt.Sprintf("scenario %s (%d user(s) × %d then %d lone, %s, %d trial(s))", cfg.Scenario,
			cfg.BacklogUsers, cfg.BacklogN, cfg.LoneUsers, cfg.Large, cfg.Trials)
	}
	if cfg.Burst {
		return fmt.Sprintf("burst of %d", cfg.N)
	}
	return fmt.Sprintf("%d/s for %s", cfg.Rate, cfg.Duration)
}

// maxReasons bounds the distinct reasons counted in one table: transport errors name ephemeral ports.
const maxReasons = 10

// tally counts a reason, or "(other)" once the table holds maxReasons.
func tally(m map[string]int, reason string) {
	if _, seen := m[reason]; seen || len(m) < maxReasons {
		m[reason]++
	} else {
		m["(other)"]++
	}
}

// outcomeTable gives the count and latency percentiles of every outcome that happened, in report order.
func outcomeTable(reqs []request) []outcomeStats {
	lat := map[outcome][]time.Duration{}
	reasons := map[outcome]map[string]int{}
	for _, r := range reqs {
		lat[r.Outcome] = append(lat[r.Outcome], r.Latency)
		if r.Reason == "" {
			continue
		}
		if reasons[r.Outcome] == nil {
			reasons[r.Outcome] = map[string]int{}
		}
		tally(reasons[r.Outcome], r.Reason)
	}
	var out []outcomeStats
	for _, o := range outcomes {
		l := lat[o]
		if len(l) == 0 {
			continue
		}
		slices.Sort(l)
		out = append(out, outcomeStats{Outcome: o, Count: len(l), Reasons: reasons[o],
			P50Ms: ms(percentile(l, 0.50)), P95Ms: ms(percentile(l, 0.95)), P99Ms: ms(percentile(l, 0.99)), MaxMs: ms(l[len(l)-1])})
	}
	return out
}

// followTable counts how the 202s were followed and summarises the times to their streams' events.
func followTable(mode string, reqs []request) followStats {
	f := followStats{Mode: mode}
	var first, final []time.Duration
	for _, r := range reqs {
		switch r.FollowedBy {
		case "":
			continue
		case followSSE:
			f.SSE++
		case followFallback:
			f.Fallbacks++
		}
		f.Followed++
		f.Reconnects += r.Reconnects
		if r.FirstEvent > 0 {
			first = append(first, r.FirstEvent)
		}
		if r.FinalEvent > 0 {
			final = append(final, r.FinalEvent)
		}
	}
	f.FirstEvent, f.FinalEvent = spans(first), spans(final)
	return f
}

// spans summarises durations; nil when there are none.
func spans(d []time.Duration) *spanStats {
	if len(d) == 0 {
		return nil
	}
	s := spanStats{Count: len(d)}
	s.P50Ms, s.P95Ms, s.MaxMs = quantilesMs(d)
	return &s
}

// quantilesMs is the nearest-rank p50, p95 and the max of ds, in milliseconds (zeros when empty).
func quantilesMs(ds []time.Duration) (p50, p95, maxMs float64) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ms(percentile(ds, 0.50)), ms(percentile(ds, 0.95)), ms(ds[len(ds)-1])
}

// percentile is the nearest-rank percentile of sorted values: always one that was observed.
func percentile[T any](sorted []T, p float64) T {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// errorRatio is the share of requests that ended neither completed nor canceled.
func errorRatio(reqs []request) float64 {
	if len(reqs) == 0 {
		return 0
	}
	bad := 0
	for _, r := range reqs {
		if !r.Outcome.succeeded() {
			bad++
		}
	}
	return float64(bad) / float64(len(reqs))
}

func peak(samples []sample) int64 {
	var p int64
	for _, s := range samples {
		p = max(p, s.Backlog)
	}
	return p
}

// drainTime runs from the last request sent to the first later sample with an empty backlog and none of
// the run's requests open (a sample taken before the last requests reach the queue is not a drain).
func drainTime(samples []sample, lastSent time.Time) (time.Duration, bool) {
	for _, s := range samples {
		if !s.At.Before(lastSent) && s.Backlog == 0 && s.Open == 0 {
			return s.At.Sub(lastSent), true
		}
	}
	return 0, false
}

func cancelTable(plans []*plan) cancelStats {
	c := cancelStats{Answers: map[string]int{}}
	for _, p := range plans {
		if !p.Cancel {
			continue
		}
		c.Planned++
		if p.CancelAnswer != "not sent" {
			c.Sent++
		}
		tally(c.Answers, p.CancelAnswer)
	}
	return c
}
