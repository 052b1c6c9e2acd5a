package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"upsize/internal/jobs"
	"upsize/internal/testredis"
)

// startFake serves the fake API on a Redis database of the test's own (testredis: claimed, emptied,
// released), so the tool's tests run beside other tests and a running service.
func startFake(t *testing.T, hang bool) (*fakeAPI, *redis.Client, string) {
	rdb := testredis.Redis(t)
	f, h := newFakeAPI(rdb, hang)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return f, rdb, srv.URL
}

func readReport(t *testing.T, path string) report {
	t.Helper()
	var rep report
	if err := json.Unmarshal(readFile(t, filepath.Dir(path), filepath.Base(path)), &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

func byOutcome(rep report) map[outcome]outcomeStats {
	m := map[outcome]outcomeStats{}
	for _, o := range rep.Outcomes {
		m[o.Outcome] = o
	}
	return m
}

func TestEndToEndBurst(t *testing.T) {
	f, rdb, base := startFake(t, false)
	out := filepath.Join(t.TempDir(), "report.json")
	stdout, _ := runTool(t,
		"-base", base, "-admin-token", fakeAdminToken, "-redis", testredis.RedisURL(rdb), "-configure",
		"-burst", "-n", "40", "-sizes", "32x32,48x24", "-scales", "2x:1,4x:1,8x:1",
		"-free-share", "0.5", "-cancel-share", "0.25", "-cancel-max-delay", "50ms",
		"-poll-interval", "50ms", "-sample-interval", "10ms", "-drain-timeout", "10s", "-max-duration", "60s",
		"-seed", "7", "-out", out)
	f.checkContract(t)
	f.mu.Lock()
	defer f.mu.Unlock()

	// setup: configured only because -configure was given; one paid and one free user with their own images
	if f.configured["/admin/models/upsize"] != `{"model":"lanczos3"}` || f.configured["/admin/credit-costs/upsize"] != `{"2x":1,"4x":2,"8x":4}` {
		t.Errorf("configuration %v", f.configured)
	}
	if len(f.plans) != 2 || len(f.uploads) != 2 {
		t.Fatalf("users %v, uploads %v", f.plans, f.uploads)
	}
	for user, ups := range f.uploads {
		slices.Sort(ups)
		if want := []string{"32x32.jpeg", "32x32.png", "48x24.jpeg", "48x24.png"}; !slices.Equal(ups, want) {
			t.Errorf("user %d uploaded %v, want %v", user, ups, want)
		}
		if f.byUser[user] == 0 {
			t.Errorf("user %d (%s) sent no upsize", user, f.plans[user])
		}
	}

	rep := readReport(t, out)
	if rep.Requests != 40 || f.upsizes != 40 || rep.StopReason != "done" || rep.Mode != "burst of 40" || rep.Seed != 7 {
		t.Fatalf("report header %+v; fake saw %d upsizes", rep, f.upsizes)
	}
	c := byOutcome(rep)
	for o, n := range map[outcome]int{completed: 10, acceptedCompleted: 10, canceled: 10, queueFull: 10} {
		if c[o].Count != n {
			t.Errorf("%s: %d, want %d (outcomes %+v)", o, c[o].Count, n, rep.Outcomes)
		}
	}
	if len(rep.Outcomes) != 4 || rep.ErrorRatio != 0.25 {
		t.Errorf("outcomes %+v, error ratio %v", rep.Outcomes, rep.ErrorRatio)
	}
	// a 201 took the fake's 30 ms of work; a 202 is followed to its state, seen at the second poll
	if c[completed].P50Ms < 30 || c[acceptedCompleted].P50Ms < 100 || c[acceptedCompleted].P50Ms < c[completed].MaxMs {
		t.Errorf("latencies: completed %+v, accepted_completed %+v", c[completed], c[acceptedCompleted])
	}
	if c[queueFull].Reasons["queue_full"] != 10 || c[canceled].Reasons["user_canceled_request"] != 10 {
		t.Errorf("reasons: %+v %+v", c[queueFull], c[canceled])
	}
	// the per-request log matches what the fake saw, request by request
	userOf := map[string]int64{}
	for id, plan := range f.plans {
		userOf[plan] = id
	}
	cancelPlanned := 0
	for _, r := range rep.PerRequest {
		if !f.rids[fmt.Sprint(userOf[r.Plan], "/", r.RequestID)] || parseScale(r.Scale) != nil ||
			(r.Size != "32x32" && r.Size != "48x24") || (r.Format != "png" && r.Format != "jpeg") || r.FirstCode == 0 {
			t.Errorf("per-request entry %+v does not match an upsize the fake saw", r)
		}
		if r.CancelPlanned {
			cancelPlanned++
		}
	}
	if len(rep.PerRequest) != 40 || cancelPlanned != rep.Cancels.Planned {
		t.Errorf("%d per-request entries, %d with a cancel planned (report: %d)", len(rep.PerRequest), cancelPlanned, rep.Cancels.Planned)
	}
	// the ten 202s were polled (-follow poll, the default): no event stream
	if fs := rep.Follow; fs.Mode != followPoll || fs.Followed != 10 || fs.SSE != 0 || fs.Fallbacks != 0 || fs.FirstEvent != nil || f.streams != 0 {
		t.Errorf("follow %+v; the fake saw %d event streams", fs, f.streams)
	}
	if sc := rep.FirstAnswers.StatusCodes; sc["201"] != 10 || sc["202"] != 10 || sc["409"] != 10 || sc["429"] != 10 {
		t.Errorf("first answers %v", sc)
	}

	// cancels: each planned one sent once, with the id of a request that was sent, as its user
	if rep.Cancels.Planned == 0 || rep.Cancels.Sent != rep.Cancels.Planned || len(f.cancels) != rep.Cancels.Planned ||
		rep.Cancels.Answers["200 canceled"] != rep.Cancels.Planned {
		t.Errorf("cancels %+v; the fake got %d", rep.Cancels, len(f.cancels))
	}
	for _, c := range f.cancels {
		if !f.rids[c] {
			t.Errorf("cancel of %s, which no upsize of that user used", c)
		}
	}

	// the sampler read the fake's asynq lists in Redis, saw them fill and drain
	if rep.Backlog.Peak < 1 || !rep.Backlog.Drained || *rep.Backlog.DrainSeconds < 0 || *rep.Backlog.DrainSeconds > 10 {
		t.Errorf("backlog %+v", rep.Backlog)
	}
	last := rep.Backlog.Samples[len(rep.Backlog.Samples)-1]
	if last.Backlog != 0 || last.Open != 0 {
		t.Errorf("sampling stopped before the drain: %+v", last)
	}
	for _, q := range jobs.Queues {
		if n := rdb.LLen(context.Background(), jobs.PendingKey(q)).Val() + rdb.LLen(context.Background(), jobs.ActiveKey(q)).Val(); n != 0 {
			t.Errorf("queue %s still holds %d tasks", q, n)
		}
	}

	md := string(readFile(t, filepath.Dir(out), "report.md"))
	if !strings.Contains(md, "](report.svg)") || !strings.Contains(md, "| accepted_completed | 10 |") ||
		!strings.Contains(md, "10 followed by polling `GET /api/requests/{id}` (`-follow poll`).") {
		t.Errorf("Markdown report:\n%s", md)
	}
	svg := parseSVG(t, readFile(t, filepath.Dir(out), "report.svg"))
	if svg.circles["outcome-completed"] != 10 || svg.circles["outcome-queue_full"] != 10 || svg.backlogPoints != len(rep.Backlog.Samples) {
		t.Errorf("chart %+v", svg)
	}
	if !strings.Contains(stdout, "40 requests") {
		t.Errorf("summary line %q", stdout)
	}
}

// Ctrl-C (a real SIGINT to the test process) and -max-duration both stop a run whose requests hang,
// without waiting for its pending cancels, and the report is still written, with the requests cut short.
func TestStopsAndStillReports(t *testing.T) {
	for _, tc := range []struct {
		name, maxDuration, stop string
		interrupt               bool
	}{
		{"ctrl-c", "60s", "interrupted", true},
		{"max-duration", "1500ms", "-max-duration reached", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, rdb, base := startFake(t, true)
			ctx, stop := interruptible(context.Background())
			defer stop()
			out := filepath.Join(t.TempDir(), "r.json")
			errc := make(chan error, 1)
			var stderr bytes.Buffer
			go func() {
				errc <- run(ctx, []string{"-base", base, "-admin-token", fakeAdminToken, "-redis", testredis.RedisURL(rdb),
					"-burst", "-n", "5", "-sizes", "16x16", "-cancel-share", "1", "-cancel-max-delay", "1h", "-seed", "1", "-sample-interval", "20ms",
					"-max-duration", tc.maxDuration, "-out", out}, &bytes.Buffer{}, &stderr)
			}()
			if tc.interrupt {
				waitFor(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.upsizes == 5 })
				if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case err := <-errc:
				if err != nil {
					t.Fatalf("run: %v\n%s", err, stderr.String())
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the run did not stop")
			}
			rep := readReport(t, out)
			if rep.StopReason != tc.stop || rep.Requests != 5 || byOutcome(rep)[interrupted].Count != 5 || rep.Backlog.Drained {
				t.Fatalf("report %+v", rep)
			}
			// the cancels planned an hour later were dropped, not waited for
			if c := rep.Cancels; c.Planned != 5 || c.Sent != 0 || c.Answers["not sent"] != 5 {
				t.Fatalf("cancels %+v", c)
			}
			readFile(t, filepath.Dir(out), "r.md")
			parseSVG(t, readFile(t, filepath.Dir(out), "r.svg"))
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting")
		}
	}
}
