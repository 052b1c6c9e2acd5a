package main

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"upsize/internal/jobs"
)

func TestNegBin(t *testing.T) {
	// one success: geometric, P(X ≤ m) = 1 - (1-p)^(m+1)
	for m := range 6 {
		if got, want := negBinCDF(1, 0.75, m), 1-math.Pow(0.25, float64(m+1)); math.Abs(got-want) > 1e-12 {
			t.Errorf("CDF(1, .75, %d) = %v, want %v", m, got, want)
		}
	}
	// three successes at p = 3/4: P(X ≤ 4) = 0.421875 × (1 + 3/4 + 6/16 + 10/64 + 15/256)
	if got := negBinCDF(3, 0.75, 4); math.Abs(got-0.421875*(1+0.75+0.375+0.15625+0.05859375)) > 1e-12 {
		t.Errorf("CDF(3, .75, 4) = %v", got)
	}
	if negBinCDF(3, 0.75, -1) != 0 || negBinCDF(2, 1, 0) != 1 {
		t.Error("CDF edges")
	}
	for _, tc := range []struct {
		r    int
		p, q float64
		want int
	}{{3, 0.75, 0.99, 5}, {3, 0.75, 0.98, 4}, {1, 0.75, 0.99, 3}, {1, 0.75, 0.5, 0}, {7, 0.75, 0.99, 8}, {2, 0.5, 0.5, 1}} {
		if got := negBinQuantile(tc.r, tc.p, tc.q); got != tc.want {
			t.Errorf("quantile(%d, %v, %v) = %d, want %d", tc.r, tc.p, tc.q, got, tc.want)
		}
	}
	// the mean by summation agrees with (r)(1-p)/p
	mean, prev := 0.0, 0.0
	for m := range 200 {
		c := negBinCDF(4, 0.75, m)
		mean += float64(m) * (c - prev)
		prev = c
	}
	if math.Abs(mean-4.0/3) > 1e-9 {
		t.Errorf("mean %v, want 4/3", mean)
	}
}

func TestLaneBound(t *testing.T) {
	p := drawFirst(jobs.QueueWeights[jobs.QueuePaid], jobs.QueueWeights[jobs.QueuePaidMore])
	if p != 0.75 {
		t.Fatalf("draw first %v: the weights changed, update the expectations below and BENCHMARKS.md", p)
	}
	// one backlog user: at most Lane = 2 ahead on the first queue
	if got := expectedAhead(2, p); got != 3 {
		t.Errorf("expected ahead %v, want 2 + 3 × 1/3", got)
	}
	if got := boundAhead(2, p); got != 7 {
		t.Errorf("bound %d, want 2 + 5", got)
	}
	if got := boundAhead(0, p); got != 3 {
		t.Errorf("nothing ahead: bound %d, want 3", got)
	}
	// latency: running ends within one task, 7 ahead over one slot, then its own run
	exp, bound := laneLatency(loneResult{RunningAtAdmission: 1, ExpectedAhead: 3, BoundAhead: 7}, 1, 1000, 1500)
	if exp != 5000 || bound != 13500 {
		t.Errorf("latency %v %v", exp, bound)
	}
	if _, bound := laneLatency(loneResult{BoundAhead: 7}, 3, 1000, 1000); bound != 4000 {
		t.Errorf("three slots: bound %v, want (ceil(7/3) + 1) × 1 s", bound)
	}
}

// at is t0 plus ms milliseconds.
func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestSummarizeAndThroughput(t *testing.T) {
	var reqs []request
	recs := map[string]taskRecord{}
	for i := range 20 {
		r := request{UserID: 7, RequestID: "r" + string(rune('a'+i)), Sent: at(100 * i), Latency: time.Duration(i+1) * time.Millisecond, Outcome: completed}
		reqs = append(reqs, r)
		recs[recKey(7, r.RequestID)] = taskRecord{Queue: jobs.QueuePaidSmall, State: "completed",
			Created: at(100 * i), Started: at(100*i + i), Finished: at(100*i + 2*i)}
	}
	reqs = append(reqs, request{UserID: 7, RequestID: "x", Sent: at(0), Latency: time.Hour, Outcome: canceled}) // no record
	s := summarize(reqs, recs)
	if s.Count != 21 || s.Completed != 20 || s.P50Ms != 11 || s.P95Ms != 20 || s.MaxMs != ms(time.Hour) ||
		s.WaitP50Ms != 9 || s.WaitP95Ms != 18 || s.RunP50Ms != 9 || s.Queues[jobs.QueuePaidSmall] != 20 || len(s.Queues) != 1 {
		t.Errorf("summary %+v", s)
	}
	if e := summarize(nil, nil); e.Count != 0 || e.P95Ms != 0 || e.Queues != nil {
		t.Errorf("empty %+v", e)
	}
	// first sent at 0, last completed one's outcome at 1900 + 20 ms: 20 in 1.92 s (the canceled one's hour is not counted)
	tp := throughputOf(reqs, recs)
	if tp.Completed != 20 || math.Abs(tp.SpanSeconds-1.92) > 1e-9 || math.Abs(tp.PerSecond-20/1.92) > 1e-9 {
		t.Errorf("throughput %+v", tp)
	}
	if got := len(sentBefore(reqs, at(1000))); got != 11 {
		t.Errorf("sent before 1 s: %d", got)
	}
	if got := ended(reqs[:20]); !got.Equal(at(1920)) {
		t.Errorf("ended %v", got)
	}
	if tp := throughputOf([]request{{Sent: at(0), Outcome: canceled}}, nil); tp.PerSecond != 0 {
		t.Errorf("nothing completed: %+v", tp)
	}
}

// The heavy burst's target: a small upsize's p95 during the burst at most 2 × its idle p95 + 100 ms,
// with every one of them completed.
func TestSmallTarget(t *testing.T) {
	idle := latencySummary{Count: 10, Completed: 10, P95Ms: 15}
	for _, c := range []struct {
		name   string
		during latencySummary
		met    bool
	}{
		{"within", latencySummary{Count: 50, Completed: 50, P95Ms: 130}, true},
		{"over", latencySummary{Count: 50, Completed: 50, P95Ms: 130.5}, false},
		{"one not completed", latencySummary{Count: 50, Completed: 49, P95Ms: 20}, false},
		{"none during the burst", latencySummary{}, false},
	} {
		if bound, met := smallTarget(idle, c.during); bound != 130 || met != c.met {
			t.Errorf("%s: bound %v met %v, want 130 %v", c.name, bound, met, c.met)
		}
	}
}

func TestMaxOverlap(t *testing.T) {
	recs := []taskRecord{
		{Started: at(0), Finished: at(10)},
		{Started: at(10), Finished: at(20)}, // starts as the first ends: one slot
		{Started: at(5), Finished: at(30)},
		{Started: at(12), Finished: at(13)},
	}
	if got := maxOverlap(recs); got != 3 {
		t.Errorf("overlap %d, want 3 (at 12 ms)", got)
	}
	if got := maxOverlap(recs[:2]); got != 1 {
		t.Errorf("back to back: %d", got)
	}
	if maxOverlap(nil) != 0 {
		t.Error("empty")
	}
}

// fairRun: user 1 sends b1…b6 at 0 ms (b1, b2 on the first queue, the rest on more); the lone user 2's
// request comes at 5 ms, while b1 runs (0-100) on the only slot. Served next: b3 (more, 100-200), b2
// (first, 200-300), then the lone one (300-400); b4 ran after it, b5 and b6 were canceled.
func fairRun() ([]request, []request, map[string]taskRecord) {
	first, more := jobs.QueuePaid, jobs.QueuePaidMore
	recs := map[string]taskRecord{}
	var backlog []request
	add := func(id string, queue, state string, created, started, finished int) {
		backlog = append(backlog, request{UserID: 1, RequestID: id, Group: groupBacklog, Outcome: map[string]outcome{"completed": completed, "canceled": canceled}[state]})
		rec := taskRecord{Queue: queue, State: state, Created: at(created)}
		if started >= 0 {
			rec.Started = at(started)
		}
		if finished >= 0 {
			rec.Finished = at(finished)
		}
		recs[recKey(1, id)] = rec
	}
	add("b1", first, "completed", 0, 0, 100)
	add("b2", first, "completed", 1, 200, 300)
	add("b3", more, "completed", 1, 100, 200)
	add("b4", more, "completed", 2, 400, 500)
	add("b5", more, "canceled", 2, -1, 420)
	add("b6", more, "canceled", 3, -1, 420)
	lone := []request{{UserID: 2, RequestID: "l1", Group: groupLone, Outcome: completed, Sent: at(4), Latency: 398 * time.Millisecond}}
	recs[recKey(2, "l1")] = taskRecord{Queue: first, State: "completed", Created: at(5), Started: at(300), Finished: at(400)}
	return backlog, lone, recs
}

func TestFairTrial(t *testing.T) {
	backlog, lone, recs := fairRun()
	tr := fairTrialOf(backlog, lone, recs, jobs.QueuePaid, jobs.QueuePaidMore, 0.75)
	if tr.Slots != 1 || tr.BacklogCompleted != 4 || tr.TaskP50Ms != 100 || tr.TaskP95Ms != 100 || len(tr.Lone) != 1 {
		t.Fatalf("trial %+v", tr)
	}
	l := tr.Lone[0]
	want := loneResult{RequestID: "l1", Outcome: completed, Queue: jobs.QueuePaid, LatencyMs: 398, WaitMs: 295,
		RunningAtAdmission: 1, FirstAhead: 1, ServedAhead: 2, MoreAhead: 1, BacklogDoneBefore: 3, BacklogDoneWhile: 3,
		ExpectedAhead: 1 + 2.0/3, BoundAhead: 5, WithinBound: true}
	// expected: (1 running + 5/3 ahead + 1) × 100 ms; bound: (1 + bound + 1) × 100 ms
	want.ExpectedLatencyMs, want.BoundLatencyMs = (2+want.ExpectedAhead)*100, float64(2+want.BoundAhead)*100
	if math.Abs(l.ExpectedAhead-want.ExpectedAhead) > 1e-12 || math.Abs(l.ExpectedLatencyMs-want.ExpectedLatencyMs) > 1e-9 {
		t.Errorf("expected %v / %v ms, want %v / %v", l.ExpectedAhead, l.ExpectedLatencyMs, want.ExpectedAhead, want.ExpectedLatencyMs)
	}
	l.ExpectedAhead, l.ExpectedLatencyMs = want.ExpectedAhead, want.ExpectedLatencyMs
	if l != want {
		t.Errorf("lone\n got %+v\nwant %+v", l, want)
	}

	// served ahead past the bound: eight more tasks before it
	for i := range 8 {
		id := "m" + string(rune('0'+i))
		backlog = append(backlog, request{UserID: 1, RequestID: id, Group: groupBacklog, Outcome: completed})
		recs[recKey(1, id)] = taskRecord{Queue: jobs.QueuePaidMore, State: "completed", Created: at(3), Started: at(210 + i), Finished: at(211 + i)}
	}
	if l := fairTrialOf(backlog, lone, recs, jobs.QueuePaid, jobs.QueuePaidMore, 0.75).Lone[0]; l.ServedAhead != 10 || l.WithinBound {
		t.Errorf("past the bound: %+v", l)
	}

	// a lone request without a record (the run stopped) is listed, not measured
	delete(recs, recKey(2, "l1"))
	if l := fairTrialOf(backlog, lone, recs, jobs.QueuePaid, jobs.QueuePaidMore, 0.75).Lone[0]; l.ServedAhead != 0 || l.LatencyMs != 398 || l.WithinBound {
		t.Errorf("no record: %+v", l)
	}
}

func TestFairSummary(t *testing.T) {
	trials := []fairTrial{
		{Lone: []loneResult{{Outcome: completed, LatencyMs: 100, ServedAhead: 2, ExpectedAhead: 3, WithinBound: true, BacklogDoneBefore: 4, BoundLatencyMs: 900, ExpectedLatencyMs: 300}}},
		{Lone: []loneResult{{Outcome: completed, LatencyMs: 300, ServedAhead: 9, ExpectedAhead: 3, WithinBound: false, BacklogDoneBefore: 10, BoundLatencyMs: 800, ExpectedLatencyMs: 500}}},
		{Lone: []loneResult{{Outcome: canceled, LatencyMs: 200, ServedAhead: 1, ExpectedAhead: 2.4, WithinBound: true, BacklogDoneBefore: 2, BoundLatencyMs: 700, ExpectedLatencyMs: 400}}},
	}
	s := fairSummaryOf(trials, 2, 0.75)
	want := fairSummary{Lone: 3, Completed: 2, LatencyP50Ms: 200, LatencyP95Ms: 300, LatencyMaxMs: 300, ServedAheadMean: 4,
		ServedAheadMax: 9, ExpectedAheadMean: 2.8, WithinBound: 2, BacklogDoneBeforeP50: 4, BacklogDoneBeforeMax: 10,
		DesignFirstAhead: 2, DesignBoundAhead: 7, BoundLatencyMaxMs: 900, ExpectedLatencyMeanMs: 400}
	if math.Abs(s.ExpectedAheadMean-want.ExpectedAheadMean) > 1e-12 {
		t.Errorf("expected mean %v", s.ExpectedAheadMean)
	}
	s.ExpectedAheadMean = want.ExpectedAheadMean
	if s != want {
		t.Errorf("summary\n got %+v\nwant %+v", s, want)
	}
	if e := fairSummaryOf(nil, 2, 0.75); e.Lone != 0 || e.DesignBoundAhead != 7 {
		t.Errorf("empty %+v", e)
	}
}

func TestScenarioMarkdownAndLine(t *testing.T) {
	idle := latencySummary{Count: 40, Completed: 40, P50Ms: 12, P95Ms: 20, MaxMs: 30, Queues: map[string]int{jobs.QueuePaidSmall: 40}}
	during := latencySummary{Count: 500, Completed: 500, P50Ms: 20, P95Ms: 150, MaxMs: 400}
	bound, met := smallTarget(idle, during)
	h := &heavyBurstReport{Heavy: infoOf(jobSpec{1024, 1024, "png", "8x", patternNoise}), Small: infoOf(jobSpec{64, 64, "jpeg", "2x", patternGradient}),
		HeavyN: 12, Phases: phasesAll, Idle: &idle, During: &during,
		Burst:        &throughput{latencySummary: latencySummary{Count: 12, Completed: 12}, SpanSeconds: 100, PerSecond: 0.12},
		HeavyOnly:    &throughput{latencySummary: latencySummary{Count: 12, Completed: 12}, SpanSeconds: 80, PerSecond: 0.15},
		SmallBoundMs: &bound, SmallTargetMet: &met}
	var b bytes.Buffer
	p := &lineWriter{w: &b}
	writeScenario(p, &scenarioReport{Name: scenarioHeavyBurst, HeavyBurst: h})
	wantIn(t, b.String(),
		"Heavy: `1024x1024:png:8x:noise`, estimated 3.29 s (large; first upsize_paid, then upsize_paid_more), 12 at once. Small: `64x64:jpeg:2x`, estimated 5.1 ms (small; upsize_paid_small)",
		"| idle (no burst) | 40 | 40 | 12.0 ms | 20.0 ms | 30.0 ms |",
		"= 140.0 ms: **not met**.",
		"| with the small stream | 12 | 12 | 100.0 s | 0.120 |",
		"| alone | 12 | 12 | 80.0 s | 0.150 |",
	)
	line := scenarioLine(&scenarioReport{Name: scenarioHeavyBurst, HeavyBurst: h})
	if want := "heavy-burst-small-stream: small p95 idle 20.0 ms; during the burst 150.0 ms (500 requests), target ≤ 140.0 ms NOT met; heavy 0.120/s with the stream; heavy 0.150/s alone"; line != want {
		t.Errorf("line\n got %q\nwant %q", line, want)
	}

	backlog, lone, recs := fairRun()
	tr := fairTrialOf(backlog, lone, recs, jobs.QueuePaid, jobs.QueuePaidMore, 0.75)
	f := &fairnessReport{Large: infoOf(jobSpec{1280, 1280, "png", "4x", patternGradient}), BacklogUsers: 1, BacklogN: 6, LoneUsers: 1,
		Lane: jobs.Lane, FirstWeight: 12, MoreWeight: 4, DrawFirst: 0.75, BoundQuantile: boundQuantile,
		Trials: []fairTrial{tr}, Summary: fairSummaryOf([]fairTrial{tr}, 2, 0.75)}
	b.Reset()
	writeScenario(p, &scenarioReport{Name: scenarioFairness, Fairness: f})
	wantIn(t, b.String(),
		"Every user sends `1280x1280:png:4x`, estimated 1.29 s (large; first upsize_paid, then upsize_paid_more).",
		"p = 12/16 = 0.75",
		"at most **7 tasks** are served ahead of a lone request (99 %)",
		"| 1 | l1 | completed | 398.0 ms | 295.0 ms | 1 | 1 | 2 (1) | 1.67 | 5 | yes | 3 (3) |",
		"| 1 | 4 | 1 | 100.0 ms | 100.0 ms |",
	)
	if line := scenarioLine(&scenarioReport{Name: scenarioFairness, Fairness: f}); !strings.HasPrefix(line, "fairness: 1 lone requests, latency p50 398.0 ms") ||
		!strings.Contains(line, "within the bound 1/1") {
		t.Errorf("line %q", line)
	}
}
