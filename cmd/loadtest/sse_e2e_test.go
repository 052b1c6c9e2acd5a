package main

import (
	"path/filepath"
	"testing"
	"time"

	"upsize/internal/testredis"
)

// -follow sse against the fake's event streams: each 202 reaches its final state (completed, canceled,
// failed) from the stream's last event; a stream cut short is opened again, one that always is falls back
// to polling, as does a 429; a 503 is tried again. The report gives the time to the first event (never a
// heartbeat: the fake sends one at once, the first event a step later) and the counts.
func TestEndToEndFollowSSE(t *testing.T) {
	f, rdb, base := startFake(t, false)
	f.step = 40 * time.Millisecond
	f.finals = []string{"completed", "canceled", "failed"}
	// by the 202s' order: the 2nd is cut once, the 3rd is refused (429), the 5th always cut, the 6th 503 once
	f.streamFaults = []string{"", "cut", "429", "", "cut-always", "503-once", "", "", "", ""}
	f.streamLimit = 64 // ten streams may be open at once for one user; the 429 is the fault's
	out := filepath.Join(t.TempDir(), "report.json")
	runTool(t,
		"-base", base, "-admin-token", fakeAdminToken, "-redis", testredis.RedisURL(rdb),
		"-burst", "-n", "40", "-sizes", "32x32", "-scales", "2x", "-cancel-share", "0", "-follow", "sse",
		"-poll-interval", "50ms", "-sample-interval", "10ms", "-drain-timeout", "10s", "-max-duration", "60s",
		"-seed", "3", "-out", out)
	f.checkContract(t)
	f.mu.Lock()
	defer f.mu.Unlock()
	// ten 202s: one stream each, one more for the cut one and the 503, three more for the one always cut
	if f.accepted != 10 || f.streams != 10+1+1+3 {
		t.Fatalf("%d 202s, %d streams asked for", f.accepted, f.streams)
	}

	rep := readReport(t, out)
	c := byOutcome(rep)
	for o, n := range map[outcome]int{completed: 10, canceled: 10, queueFull: 10, acceptedCompleted: 4, acceptedCanceled: 3, acceptedFailed: 3} {
		if c[o].Count != n {
			t.Errorf("%s: %d, want %d (outcomes %+v)", o, c[o].Count, n, rep.Outcomes)
		}
	}
	if c[acceptedFailed].Reasons["422 invalid_image"] != 3 {
		t.Errorf("failed: %+v", c[acceptedFailed])
	}
	fs := rep.Follow
	if fs.Mode != followSSE || fs.Followed != 10 || fs.SSE != 8 || fs.Fallbacks != 2 || fs.Reconnects != 5 {
		t.Errorf("follow %+v", fs)
	}
	// every stream but the refused one sent events; the two that fell back had no final event
	step := float64(f.step / time.Millisecond)
	if fs.FirstEvent == nil || fs.FinalEvent == nil || fs.FirstEvent.Count != 9 || fs.FinalEvent.Count != 8 ||
		fs.FirstEvent.P50Ms < step || fs.FinalEvent.P50Ms < 4*step || fs.FirstEvent.MaxMs > fs.FinalEvent.MaxMs {
		t.Errorf("times to events: first %+v, final %+v", fs.FirstEvent, fs.FinalEvent)
	}
	by := map[string]int{}
	for _, r := range rep.PerRequest {
		if r.FirstCode != 202 {
			if r.FollowedBy != "" || r.FirstEvent != 0 {
				t.Errorf("a %d was followed: %+v", r.FirstCode, r)
			}
			continue
		}
		by[r.FollowedBy]++
		if r.FinalEvent > 0 && (r.FirstEvent > r.FinalEvent || r.FinalEvent > r.Latency) {
			t.Errorf("times of %s: first %s, final %s, latency %s", r.RequestID, r.FirstEvent, r.FinalEvent, r.Latency)
		}
		if (r.FollowedBy == followSSE) != (r.FinalEvent > 0) {
			t.Errorf("%s followed by %s, final event after %s", r.RequestID, r.FollowedBy, r.FinalEvent)
		}
	}
	if by[followSSE] != 8 || by[followFallback] != 2 {
		t.Errorf("per request: %v", by)
	}
	if !rep.Backlog.Drained {
		t.Errorf("backlog %+v", rep.Backlog)
	}

	md := string(readFile(t, filepath.Dir(out), "report.md"))
	wantIn(t, md,
		"## Following 202 answers",
		"10 followed by their event stream (`-follow sse`): 8 by the stream alone, 2 fell back to polling; 5 stream(s) opened again.",
		"| first event | 9 |",
		"| final event | 8 |",
		"| accepted_failed | 3 |",
	)
}
