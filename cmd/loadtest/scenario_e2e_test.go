package main

import (
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"upsize/internal/jobs"
	"upsize/internal/testredis"
)

// startServingFake is the fake API with upsizes served as the service serves them (fakeScheduler),
// estimated work sped up 20 times.
func startServingFake(t *testing.T) (*fakeAPI, *redis.Client, string) {
	rdb := testredis.Redis(t)
	f, h := newFakeAPI(rdb, false)
	f.serve = newFakeScheduler(rdb, 20)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return f, rdb, srv.URL
}

func runScenarioFlags(t *testing.T, rdb *redis.Client, base string, flags ...string) (report, string, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "scenario.json")
	stdout, _ := runTool(t, append([]string{"-base", base, "-admin-token", fakeAdminToken, "-redis", testredis.RedisURL(rdb), "-configure",
		"-sample-interval", "20ms", "-drain-timeout", "10s", "-max-duration", "90s", "-out", out}, flags...)...)
	return readReport(t, out), string(readFile(t, filepath.Dir(out), "scenario.md")), stdout
}

// groupsOf splits the report's requests by their scenario group.
func groupsOf(rep report) map[string][]request {
	m := map[string][]request{}
	for _, r := range rep.PerRequest {
		m[r.Group] = append(m[r.Group], r)
	}
	return m
}

func TestScenarioHeavyBurstSmallStream(t *testing.T) {
	f, rdb, base := startServingFake(t)
	// 640² PNG 8x: estimated 1.29 s, large (64 ms in the fake); 16² JPEG 2x: small
	rep, md, stdout := runScenarioFlags(t, rdb, base, "-scenario", "heavy-burst-small-stream",
		"-heavy", "640x640:png:8x:noise", "-heavy-n", "4", "-small", "16x16:jpeg:2x", "-small-n", "10")
	f.checkContract(t)
	h := rep.Scenario.HeavyBurst
	if rep.Scenario.Name != scenarioHeavyBurst || h == nil || rep.StopReason != "done" {
		t.Fatalf("scenario %+v, stop %s", rep.Scenario, rep.StopReason)
	}
	if h.Heavy.Class != "large" || h.Heavy.Queue != jobs.QueuePaid || h.Heavy.MoreQueue != jobs.QueuePaidMore ||
		h.Small.Class != "small" || h.Small.Queue != jobs.QueuePaidSmall || h.HeavyN != 4 {
		t.Errorf("jobs %+v %+v", h.Heavy, h.Small)
	}
	if h.Idle == nil || h.Idle.Count != 10 || h.Idle.Completed != 10 || h.Idle.Queues[jobs.QueuePaidSmall] != 10 || h.Idle.P95Ms <= 0 {
		t.Errorf("idle %+v", h.Idle)
	}
	// the stream ran while the burst did: 4 × 50 ms on one slot
	if h.During == nil || h.During.Count < 1 || h.During.Completed != h.During.Count || h.During.Queues[jobs.QueuePaidSmall] != h.During.Count {
		t.Errorf("during %+v", h.During)
	}
	for name, tp := range map[string]*throughput{"burst": h.Burst, "heavy only": h.HeavyOnly} {
		// the user's first jobs.Lane requests on the first queue, the rest on the more one
		if tp == nil || tp.Completed != 4 || tp.PerSecond <= 0 || tp.SpanSeconds < 0.15 ||
			tp.Queues[jobs.QueuePaid] != jobs.Lane || tp.Queues[jobs.QueuePaidMore] != 4-jobs.Lane || tp.RunP50Ms < 40 {
			t.Errorf("%s: %+v", name, tp)
		}
	}
	if h.SmallBoundMs == nil || *h.SmallBoundMs != 2*h.Idle.P95Ms+100 || h.SmallTargetMet == nil ||
		*h.SmallTargetMet != (h.During.P95Ms <= *h.SmallBoundMs) {
		t.Errorf("target %v %v", h.SmallBoundMs, h.SmallTargetMet)
	}
	g := groupsOf(rep)
	for group, n := range map[string]int{groupWarmup: warmupRequests, groupSmallIdle: 10, groupHeavyBurst: 4, groupHeavyOnly: 4} {
		if len(g[group]) != n {
			t.Errorf("group %s: %d requests, want %d", group, len(g[group]), n)
		}
	}
	if len(g[groupSmallBurst]) < h.During.Count {
		t.Errorf("%d small-burst requests, %d during", len(g[groupSmallBurst]), h.During.Count)
	}
	wantIn(t, md, "## Scenario: heavy-burst-small-stream", "| idle (no burst) | 10 | 10 |", "| during the heavy burst |",
		"Target: p95 during the burst at most 2 × the idle p95", "| with the small stream | 4 | 4 |", "| alone | 4 | 4 |")
	if !strings.Contains(stdout, "heavy-burst-small-stream: small p95 idle") {
		t.Errorf("summary %q", stdout)
	}
}

func TestScenarioFairness(t *testing.T) {
	f, rdb, base := startServingFake(t)
	rep, md, stdout := runScenarioFlags(t, rdb, base, "-scenario", "fairness", "-large", "640x640:png:8x",
		"-backlog-users", "2", "-backlog-n", "6", "-lone-users", "1", "-trials", "2")
	f.checkContract(t)
	f.mu.Lock()
	users := len(f.plans)
	f.mu.Unlock()
	if users != 6 {
		t.Errorf("%d users, want 3 a trial", users)
	}
	fr := rep.Scenario.Fairness
	if fr == nil || len(fr.Trials) != 2 || fr.Lane != jobs.Lane || fr.DrawFirst != 0.75 || fr.Large.Class != "large" {
		t.Fatalf("fairness %+v", fr)
	}
	for i, tr := range fr.Trials {
		if len(tr.Lone) != 1 || tr.Slots != 1 || tr.TaskP50Ms < 40 {
			t.Fatalf("trial %d: %+v", i+1, tr)
		}
		l := tr.Lone[0]
		// the lone user's only request is in its first lane; ahead of it at most the other users' lanes
		if l.Outcome != completed || l.Queue != jobs.QueuePaid || l.FirstAhead > 2*jobs.Lane || l.ServedAhead < l.FirstAhead ||
			l.BacklogDoneBefore < l.ServedAhead || l.LatencyMs < 40 || l.BoundAhead != boundAhead(l.FirstAhead, 0.75) {
			t.Errorf("trial %d lone %+v", i+1, l)
		}
	}
	s := fr.Summary
	if s.Lone != 2 || s.Completed != 2 || s.DesignFirstAhead != 2*jobs.Lane || s.DesignBoundAhead != boundAhead(4, 0.75) {
		t.Errorf("summary %+v", s)
	}
	// every backlog request has an outcome: completed, or canceled once the lone one had its own
	g := groupsOf(rep)
	if len(g[groupBacklog]) != 24 || len(g[groupLone]) != 2 {
		t.Fatalf("groups: %d backlog, %d lone", len(g[groupBacklog]), len(g[groupLone]))
	}
	done := 0
	for _, r := range g[groupBacklog] {
		switch r.Outcome {
		case completed:
			done++
		case canceled:
		default:
			t.Errorf("backlog request %+v", r)
		}
	}
	if done != fr.Trials[0].BacklogCompleted+fr.Trials[1].BacklogCompleted || rep.Cancels.Sent != 24-done {
		t.Errorf("%d backlog completed, trials say %d+%d; cancels %+v", done, fr.Trials[0].BacklogCompleted, fr.Trials[1].BacklogCompleted, rep.Cancels)
	}
	wantIn(t, md, "## Scenario: fairness", fmt.Sprintf("at most **%d tasks**", boundAhead(4, 0.75)), "| 1 | lt-lone-", "| 2 | lt-lone-", "Over the 2 lone requests (2 completed)")
	if !strings.Contains(stdout, "fairness: 2 lone requests") {
		t.Errorf("summary %q", stdout)
	}
}

func TestScenarioFairnessKeepBacklog(t *testing.T) {
	_, rdb, base := startServingFake(t)
	rep, _, _ := runScenarioFlags(t, rdb, base, "-scenario", "fairness", "-large", "640x640:png:8x",
		"-backlog-n", "5", "-keep-backlog")
	fr := rep.Scenario.Fairness
	if len(fr.Trials) != 1 || fr.Trials[0].BacklogCompleted != 5 || rep.Cancels.Planned != 0 || !fr.KeepBacklog {
		t.Fatalf("trials %+v, cancels %+v", fr.Trials, rep.Cancels)
	}
}
