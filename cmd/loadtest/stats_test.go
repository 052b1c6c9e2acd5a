package main

import (
	"math/rand/v2"
	"net/url"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// syntheticRun: 100 completed at 1..100 ms, 20 accepted_completed at 1..20 s, 3 queue_full at 2 ms with
// two reasons, 1 transport error; and a backlog that rises, falls to 0 while requests are still open,
// then drains 2.5 s after the last request was sent.
func syntheticRun() runResult {
	var reqs []request
	for i := range 100 {
		reqs = append(reqs, request{Outcome: completed, Sent: t0.Add(time.Duration(i) * 10 * time.Millisecond), Latency: time.Duration(i+1) * time.Millisecond})
	}
	for i := range 20 {
		reqs = append(reqs, request{Outcome: acceptedCompleted, Sent: t0.Add(time.Second), Latency: time.Duration(i+1) * time.Second})
	}
	for i := range 3 {
		reqs = append(reqs, request{Outcome: queueFull, Sent: t0, Latency: 2 * time.Millisecond, Reason: []string{"queue_full", "queue_full", "busy"}[i]})
	}
	reqs = append(reqs, request{Outcome: transportError, Sent: t0, Latency: time.Millisecond, Reason: "connection refused"})
	rand.New(rand.NewPCG(3, 4)).Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })

	lastSent := t0.Add(2 * time.Second)
	samples := []sample{
		{At: t0, Backlog: 0, Open: 0},
		{At: t0.Add(time.Second), Backlog: 7, Open: 30},
		{At: t0.Add(2 * time.Second), Backlog: 12, Open: 40},
		{At: t0.Add(3 * time.Second), Backlog: 0, Open: 3}, // empty queue, but requests still open
		{At: t0.Add(4500 * time.Millisecond), Backlog: 0, Open: 0},
		{At: t0.Add(5 * time.Second), Backlog: 0, Open: 0},
	}
	var m vegeta.Metrics
	m.Add(&vegeta.Result{Code: 201, Timestamp: t0, Latency: 10 * time.Millisecond})
	m.Add(&vegeta.Result{Code: 429, Timestamp: t0.Add(time.Second), Latency: 2 * time.Millisecond})
	m.Close()
	return runResult{
		Cfg:     &config{Base: &url.URL{Scheme: "http", Host: "127.0.0.1:8080"}, Burst: true, N: 124, Seed: 42},
		Started: t0, Finished: t0.Add(6 * time.Second), StopReason: "done",
		Requests: reqs, LastSent: lastSent, Samples: samples, Metrics: m,
		Plans: []*plan{
			{Cancel: true, CancelAnswer: "200 canceled"},
			{Cancel: true, CancelAnswer: "409 request_already_completed"},
			{Cancel: true, CancelAnswer: "not sent"},
			{Cancel: false},
		},
	}
}

func TestOutcomeTablePercentiles(t *testing.T) {
	got := outcomeTable(syntheticRun().Requests)
	want := []outcomeStats{
		{Outcome: completed, Count: 100, P50Ms: 50, P95Ms: 95, P99Ms: 99, MaxMs: 100},
		{Outcome: acceptedCompleted, Count: 20, P50Ms: 10000, P95Ms: 19000, P99Ms: 20000, MaxMs: 20000},
		{Outcome: queueFull, Count: 3, P50Ms: 2, P95Ms: 2, P99Ms: 2, MaxMs: 2},
		{Outcome: transportError, Count: 1, P50Ms: 1, P95Ms: 1, P99Ms: 1, MaxMs: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("outcomes %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Outcome != w.Outcome || g.Count != w.Count || g.P50Ms != w.P50Ms || g.P95Ms != w.P95Ms || g.P99Ms != w.P99Ms || g.MaxMs != w.MaxMs {
			t.Errorf("row %d: %+v, want %+v", i, g, w)
		}
	}
	if r := got[2].Reasons; len(r) != 2 || r["queue_full"] != 2 || r["busy"] != 1 {
		t.Errorf("queue_full reasons %v", r)
	}
	if got[0].Reasons != nil {
		t.Errorf("completed has reasons %v", got[0].Reasons)
	}
}

func TestPercentileNearestRank(t *testing.T) {
	d := []time.Duration{10, 20, 30, 40}
	for p, want := range map[float64]time.Duration{0: 10, 0.25: 10, 0.26: 20, 0.5: 20, 0.75: 30, 0.99: 40, 1: 40} {
		if got := percentile(d, p); got != want {
			t.Errorf("percentile(%v) = %v, want %v", p, got, want)
		}
	}
	if got := percentile([]time.Duration{7}, 0.99); got != 7 {
		t.Errorf("single value: %v", got)
	}
}

func TestDrainTime(t *testing.T) {
	r := syntheticRun()
	d, ok := drainTime(r.Samples, r.LastSent)
	if !ok || d != 2500*time.Millisecond {
		t.Fatalf("drain %v %v, want 2.5s (the empty queue at 3s still had open requests)", d, ok)
	}
	if _, ok := drainTime(r.Samples[:4], r.LastSent); ok {
		t.Fatal("drained without a sample of an empty backlog and no open request")
	}
	// a zero before the last request was sent is not a drain
	if _, ok := drainTime(r.Samples[:1], r.LastSent); ok {
		t.Fatal("a sample taken before the last request counted as a drain")
	}
	if d, ok := drainTime([]sample{{At: t0, Backlog: 0}}, t0); !ok || d != 0 {
		t.Fatalf("sample at the last send: %v %v", d, ok)
	}
}

func TestBuildReport(t *testing.T) {
	rep := buildReport(syntheticRun())
	if rep.Requests != 124 || rep.Mode != "burst of 124" || rep.Seed != 42 || rep.Target != "http://127.0.0.1:8080" {
		t.Fatalf("header %+v", rep)
	}
	if want := 4.0 / 124; rep.ErrorRatio != want {
		t.Errorf("error ratio %v, want %v", rep.ErrorRatio, want)
	}
	if rep.Backlog.Peak != 12 || !rep.Backlog.Drained || rep.Backlog.DrainSeconds == nil || *rep.Backlog.DrainSeconds != 2.5 {
		t.Errorf("backlog %+v", rep.Backlog)
	}
	if rep.AchievedRate != 2 || rep.FirstAnswers.StatusCodes["429"] != 1 || rep.FirstAnswers.SendSeconds != 1 {
		t.Errorf("first answers: rate %v, %+v", rep.AchievedRate, rep.FirstAnswers)
	}
	c := rep.Cancels
	if c.Planned != 3 || c.Sent != 2 || c.Answers["200 canceled"] != 1 || c.Answers["not sent"] != 1 {
		t.Errorf("cancels %+v", c)
	}
}

func TestTallyBoundsReasons(t *testing.T) {
	m := map[string]int{}
	for i := range 25 {
		tally(m, "read tcp 127.0.0.1:"+string(rune('a'+i)))
	}
	tally(m, "read tcp 127.0.0.1:a")
	if len(m) != maxReasons+1 || m["(other)"] != 15 || m["read tcp 127.0.0.1:a"] != 2 {
		t.Fatalf("tally %v", m)
	}
}

// followTable counts the 202s by how they were followed and summarises the times to their events by
// nearest rank, over the requests that had them.
func TestFollowTable(t *testing.T) {
	reqs := []request{
		{Outcome: completed},
		{Outcome: acceptedCompleted, FollowedBy: followPoll},
	}
	if got := followTable(followPoll, reqs); got != (followStats{Mode: followPoll, Followed: 1}) {
		t.Fatalf("poll: %+v", got)
	}
	reqs = []request{{Outcome: completed}, {Outcome: queueFull}}
	for i := range 20 { // first events at 1..20 ms, final events at 101..120 ms
		reqs = append(reqs, request{Outcome: acceptedCompleted, FollowedBy: followSSE,
			FirstEvent: time.Duration(i+1) * time.Millisecond, FinalEvent: time.Duration(i+101) * time.Millisecond})
	}
	reqs = append(reqs,
		request{Outcome: acceptedCanceled, FollowedBy: followFallback, Reconnects: 3, FirstEvent: 500 * time.Millisecond},
		request{Outcome: acceptedFailed, FollowedBy: followFallback}, // 429: no event
		request{Outcome: acceptedCompleted, FollowedBy: followSSE, Reconnects: 1, FirstEvent: 30 * time.Millisecond, FinalEvent: 900 * time.Millisecond},
	)
	got := followTable(followSSE, reqs)
	if got.Mode != followSSE || got.Followed != 23 || got.SSE != 21 || got.Fallbacks != 2 || got.Reconnects != 4 {
		t.Fatalf("counts %+v", got)
	}
	if *got.FirstEvent != (spanStats{Count: 22, P50Ms: 11, P95Ms: 30, MaxMs: 500}) {
		t.Errorf("first event %+v", *got.FirstEvent)
	}
	if *got.FinalEvent != (spanStats{Count: 21, P50Ms: 111, P95Ms: 120, MaxMs: 900}) {
		t.Errorf("final event %+v", *got.FinalEvent)
	}
}
