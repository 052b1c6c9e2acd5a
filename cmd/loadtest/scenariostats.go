package main

import (
	"math"
	"slices"
	"strconv"
	"time"
)

// What the scenarios report, and the arithmetic behind it: pure functions of the requests, of the
// service's record of each (its queue and when it was admitted, started and finished) and of the queue
// weights, so that they can be tested on made-up runs.

// taskRecord is the service's record of one request (cancel.Request): the queue it was put on, and when
// it was admitted, started on a worker slot and finished (zero: not yet, or never).
type taskRecord struct {
	Queue, State               string
	Created, Started, Finished time.Time
}

func (t taskRecord) ran() bool { return !t.Started.IsZero() && !t.Finished.IsZero() }

// recKey names a request: ids are scoped to their user.
func recKey(userID int64, requestID string) string {
	return strconv.FormatInt(userID, 10) + "/" + requestID
}

// latencySummary describes requests of one kind: their latency as the client saw it (sending → outcome)
// and, from the service's records, how long they waited in the queue (admitted → started) and ran
// (started → finished).
type latencySummary struct {
	Count     int     `json:"count"`
	Completed int     `json:"completed"` // 201, or 202 then completed
	P50Ms     float64 `json:"p50Ms"`
	P95Ms     float64 `json:"p95Ms"`
	MaxMs     float64 `json:"maxMs"`
	WaitP50Ms float64 `json:"queueWaitP50Ms"`
	WaitP95Ms float64 `json:"queueWaitP95Ms"`
	RunP50Ms  float64 `json:"runP50Ms"`
	RunP95Ms  float64 `json:"runP95Ms"`
	// Queues counts the queues the service put them on.
	Queues map[string]int `json:"queues,omitempty"`
}

// summarize describes reqs; recs (by recKey) may lack some of them.
func summarize(reqs []request, recs map[string]taskRecord) latencySummary {
	s := latencySummary{Count: len(reqs)}
	var lat, wait, run []time.Duration
	for _, r := range reqs {
		lat = append(lat, r.Latency)
		if r.Outcome.completed() {
			s.Completed++
		}
		rec, ok := recs[recKey(r.UserID, r.RequestID)]
		if !ok {
			continue
		}
		if s.Queues == nil {
			s.Queues = map[string]int{}
		}
		s.Queues[rec.Queue]++
		if rec.ran() {
			wait = append(wait, rec.Started.Sub(rec.Created))
			run = append(run, rec.Finished.Sub(rec.Started))
		}
	}
	s.P50Ms, s.P95Ms, s.MaxMs = quantilesMs(lat)
	s.WaitP50Ms, s.WaitP95Ms, _ = quantilesMs(wait)
	s.RunP50Ms, s.RunP95Ms, _ = quantilesMs(run)
	return s
}

// throughput is how fast a burst was served.
type throughput struct {
	latencySummary
	// SpanSeconds runs from the first request sent to the last completed one's outcome.
	SpanSeconds float64 `json:"spanSeconds"`
	PerSecond   float64 `json:"perSecond"` // completed / SpanSeconds
}

func throughputOf(reqs []request, recs map[string]taskRecord) throughput {
	t := throughput{latencySummary: summarize(reqs, recs)}
	var first, last time.Time
	for _, r := range reqs {
		if first.IsZero() || r.Sent.Before(first) {
			first = r.Sent
		}
		if end := r.Sent.Add(r.Latency); r.Outcome.completed() && end.After(last) {
			last = end
		}
	}
	if t.Completed > 0 && last.After(first) {
		t.SpanSeconds = last.Sub(first).Seconds()
		t.PerSecond = float64(t.Completed) / t.SpanSeconds
	}
	return t
}

// ended is when the last of reqs had its outcome.
func ended(reqs []request) time.Time {
	var last time.Time
	for _, r := range reqs {
		last = maxTime(last, r.Sent.Add(r.Latency))
	}
	return last
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// sentBefore keeps the requests sent before t.
func sentBefore(reqs []request, t time.Time) []request {
	var out []request
	for _, r := range reqs {
		if r.Sent.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// smallTarget is the target for a small upsize's p95 during a heavy burst, at most twice its idle p95
// plus 100 ms, and whether the requests during the burst met it: every one completed, their p95 within.
func smallTarget(idle, during latencySummary) (boundMs float64, met bool) {
	boundMs = 2*idle.P95Ms + 100
	return boundMs, during.Count > 0 && during.Completed == during.Count && during.P95Ms <= boundMs
}

// The lane bound. A worker's general slot, when it frees, asks asynq for a task: asynq draws an order
// of the queues at random by weight and takes the first task of the first non-empty one. With a user's
// first Lane large requests on the plan's first queue (weight wf) and the rest on its "more" queue (wm),
// a lone request on the first queue while the more queue is never empty is taken at the (a+1)-th draw
// that picks the first queue, a being the first-queue tasks ahead of it; every draw picks the first
// queue with p = wf/(wf+wm). The "more" tasks started meanwhile are therefore negative-binomial:
// failures before the (a+1)-th success, mean (a+1)(1-p)/p. The tasks started between its admission and
// its start are a + that.

// drawFirst is the chance that a draw between the two non-empty queues picks the first one.
func drawFirst(firstWeight, moreWeight int) float64 {
	return float64(firstWeight) / float64(firstWeight+moreWeight)
}

// negBinCDF is P(X ≤ m) for X the failures before the r-th success of trials that succeed with p.
func negBinCDF(r int, p float64, m int) float64 {
	if m < 0 {
		return 0
	}
	// P(X = j) = C(j+r-1, j) p^r (1-p)^j, by the ratio of consecutive terms.
	term := math.Pow(p, float64(r))
	sum := term
	for j := 1; j <= m; j++ {
		term *= float64(j+r-1) / float64(j) * (1 - p)
		sum += term
	}
	return min(sum, 1)
}

// negBinQuantile is the smallest m with P(X ≤ m) ≥ q.
func negBinQuantile(r int, p, q float64) int {
	m := 0
	for negBinCDF(r, p, m) < q {
		m++
	}
	return m
}

// boundQuantile is the probability the lane bound holds with.
const boundQuantile = 0.99

// expectedAhead is the mean of the tasks started between a lone request's admission and its start, with
// a first-queue tasks ahead of it.
func expectedAhead(a int, p float64) float64 { return float64(a) + float64(a+1)*(1-p)/p }

// boundAhead is their boundQuantile quantile.
func boundAhead(a int, p float64) int { return a + negBinQuantile(a+1, p, boundQuantile) }

// loneResult is what became of one lone request of a fairness trial, measured against the lane bound.
type loneResult struct {
	RequestID string  `json:"requestId"`
	Outcome   outcome `json:"outcome"`
	Queue     string  `json:"queue"`
	LatencyMs float64 `json:"latencyMs"`
	WaitMs    float64 `json:"queueWaitMs"` // admitted → started, from the service's record
	// RunningAtAdmission: tasks running when it was admitted. FirstAhead: tasks on its queue admitted
	// before it and not started then. ServedAhead: tasks started between its admission and its start,
	// MoreAhead of them from the "more" queue.
	RunningAtAdmission int `json:"runningAtAdmission"`
	FirstAhead         int `json:"firstAhead"`
	ServedAhead        int `json:"servedAhead"`
	MoreAhead          int `json:"moreAhead"`
	// BacklogDoneBefore: backlog requests completed before it was; BacklogDoneWhile: of them, those
	// completed after it was admitted.
	BacklogDoneBefore int `json:"backlogDoneBefore"`
	BacklogDoneWhile  int `json:"backlogDoneWhile"`
	// The lane bound for FirstAhead: the mean of ServedAhead and its boundQuantile quantile, and whether
	// ServedAhead kept within it; then the latencies they give with the trial's task times and slots.
	ExpectedAhead     float64 `json:"expectedAhead"`
	BoundAhead        int     `json:"boundAhead"`
	WithinBound       bool    `json:"withinBound"`
	ExpectedLatencyMs float64 `json:"expectedLatencyMs"`
	BoundLatencyMs    float64 `json:"boundLatencyMs"`
}

// fairTrial is one fairness trial: backlog users' requests sent at once, then the lone requests.
type fairTrial struct {
	Lone []loneResult `json:"lone"`
	// BacklogCompleted: backlog requests completed in the trial (the rest were canceled, unless
	// -keep-backlog).
	BacklogCompleted int `json:"backlogCompleted"`
	// Slots: most tasks seen running at once (the worker's slots that took this work).
	Slots     int     `json:"slots"`
	TaskP50Ms float64 `json:"taskP50Ms"` // run time of a completed task (started → finished)
	TaskP95Ms float64 `json:"taskP95Ms"`
}

// fairTrialOf measures a trial: backlog and lone are its requests, recs the service's records of
// them, first and more the lone requests' queues, p the chance a draw picks first over more.
func fairTrialOf(backlog, lone []request, recs map[string]taskRecord, first, more string, p float64) fairTrial {
	var t fairTrial
	all := append(slices.Clone(backlog), lone...)
	var runs []time.Duration
	var spans []taskRecord
	for _, r := range all {
		rec, ok := recs[recKey(r.UserID, r.RequestID)]
		if !ok || !rec.ran() {
			continue
		}
		spans = append(spans, rec)
		if rec.State == "completed" {
			runs = append(runs, rec.Finished.Sub(rec.Started))
		}
	}
	t.Slots = maxOverlap(spans)
	t.TaskP50Ms, t.TaskP95Ms, _ = quantilesMs(runs)
	for _, r := range backlog {
		if r.Outcome.completed() {
			t.BacklogCompleted++
		}
	}
	for _, l := range lone {
		me, ok := recs[recKey(l.UserID, l.RequestID)]
		res := loneResult{RequestID: l.RequestID, Outcome: l.Outcome, Queue: me.Queue, LatencyMs: ms(l.Latency)}
		if !ok || !me.ran() {
			t.Lone = append(t.Lone, res)
			continue
		}
		res.WaitMs = ms(me.Started.Sub(me.Created))
		for _, o := range all {
			if o.UserID == l.UserID && o.RequestID == l.RequestID {
				continue
			}
			rec, ok := recs[recKey(o.UserID, o.RequestID)]
			if !ok {
				continue
			}
			started := !rec.Started.IsZero()
			switch {
			case started && !rec.Started.After(me.Created) && (rec.Finished.IsZero() || rec.Finished.After(me.Created)):
				res.RunningAtAdmission++
			case rec.Queue == first && rec.Created.Before(me.Created) && (!started || rec.Started.After(me.Created)):
				res.FirstAhead++
			}
			if started && rec.Started.After(me.Created) && rec.Started.Before(me.Started) {
				res.ServedAhead++
				if rec.Queue == more {
					res.MoreAhead++
				}
			}
			if o.Group == groupBacklog && rec.State == "completed" && !rec.Finished.After(me.Finished) {
				res.BacklogDoneBefore++
				if rec.Finished.After(me.Created) {
					res.BacklogDoneWhile++
				}
			}
		}
		res.ExpectedAhead = expectedAhead(res.FirstAhead, p)
		res.BoundAhead = boundAhead(res.FirstAhead, p)
		res.WithinBound = res.ServedAhead <= res.BoundAhead
		res.ExpectedLatencyMs, res.BoundLatencyMs = laneLatency(res, max(t.Slots, 1), t.TaskP50Ms, t.TaskP95Ms)
		t.Lone = append(t.Lone, res)
	}
	return t
}

// laneLatency turns the bound in tasks into latencies: what was running when the request came ends
// within one task time, the tasks served ahead of it share the slots, then it runs. Expected: with the
// mean of the tasks ahead and the median task time; bound: the quantile and the p95 task time.
func laneLatency(l loneResult, slots int, taskP50Ms, taskP95Ms float64) (expected, bound float64) {
	running := float64(min(l.RunningAtAdmission, 1))
	expected = (running + l.ExpectedAhead/float64(slots) + 1) * taskP50Ms
	bound = (running + math.Ceil(float64(l.BoundAhead)/float64(slots)) + 1) * taskP95Ms
	return expected, bound
}

// maxOverlap is the most records running at the same moment.
func maxOverlap(recs []taskRecord) int {
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, r := range recs {
		edges = append(edges, edge{r.Started, 1}, edge{r.Finished, -1})
	}
	// at the same instant an end comes before a start: a slot handed over is not two running
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.delta - b.delta
	})
	n, most := 0, 0
	for _, e := range edges {
		n += e.delta
		most = max(most, n)
	}
	return most
}

// fairSummary gathers the lone requests of every trial.
type fairSummary struct {
	Lone         int     `json:"lone"`
	Completed    int     `json:"completed"`
	LatencyP50Ms float64 `json:"latencyP50Ms"`
	LatencyP95Ms float64 `json:"latencyP95Ms"`
	LatencyMaxMs float64 `json:"latencyMaxMs"`
	// ServedAhead over the lone requests: its mean and largest, and how many kept within their bound.
	ServedAheadMean   float64 `json:"servedAheadMean"`
	ServedAheadMax    int     `json:"servedAheadMax"`
	ExpectedAheadMean float64 `json:"expectedAheadMean"`
	WithinBound       int     `json:"withinBound"`
	// BacklogDoneBefore: the backlog requests completed before a lone one, median and largest.
	BacklogDoneBeforeP50 int `json:"backlogDoneBeforeP50"`
	BacklogDoneBeforeMax int `json:"backlogDoneBeforeMax"`
	// DesignBoundAhead: the bound whatever the timing: every backlog user with Lane requests still
	// ahead on the first queue, and the other lone requests too.
	DesignFirstAhead int `json:"designFirstAhead"`
	DesignBoundAhead int `json:"designBoundAhead"`
	// BoundLatencyMaxMs: the largest latency bound of a lone request, against LatencyMaxMs.
	BoundLatencyMaxMs     float64 `json:"boundLatencyMaxMs"`
	ExpectedLatencyMeanMs float64 `json:"expectedLatencyMeanMs"`
}

func fairSummaryOf(trials []fairTrial, designFirstAhead int, p float64) fairSummary {
	s := fairSummary{DesignFirstAhead: designFirstAhead, DesignBoundAhead: boundAhead(designFirstAhead, p)}
	var lat []time.Duration
	var done []int
	var ahead, expected, expLat float64
	for _, t := range trials {
		for _, l := range t.Lone {
			s.Lone++
			if l.Outcome.completed() {
				s.Completed++
			}
			lat = append(lat, time.Duration(l.LatencyMs*float64(time.Millisecond)))
			done = append(done, l.BacklogDoneBefore)
			ahead += float64(l.ServedAhead)
			expected += l.ExpectedAhead
			expLat += l.ExpectedLatencyMs
			s.ServedAheadMax = max(s.ServedAheadMax, l.ServedAhead)
			s.BoundLatencyMaxMs = max(s.BoundLatencyMaxMs, l.BoundLatencyMs)
			if l.WithinBound {
				s.WithinBound++
			}
		}
	}
	if s.Lone == 0 {
		return s
	}
	s.LatencyP50Ms, s.LatencyP95Ms, s.LatencyMaxMs = quantilesMs(lat)
	s.ServedAheadMean, s.ExpectedAheadMean, s.ExpectedLatencyMeanMs = ahead/float64(s.Lone), expected/float64(s.Lone), expLat/float64(s.Lone)
	slices.Sort(done)
	s.BacklogDoneBeforeP50 = percentile(done, 0.50)
	s.BacklogDoneBeforeMax = done[len(done)-1]
	return s
}
