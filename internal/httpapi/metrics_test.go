package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"upsize/internal/jobs"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
	"upsize/internal/testlog"
)

// After upsizes, a rejection, a cancel of running work and a cancel too late, the API and the worker
// expose the metrics operators watch, with bounded labels only.
func TestMetricsAfterTraffic(t *testing.T) {
	release := make(chan struct{})
	e := testenv.New(t, testenv.Options{Upsize: gated(release)})
	e.Configure()
	u := e.NewUser("paid", 10)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	done := make(chan *testenv.Resp, 1)
	go func() { done <- e.Upsize(context.Background(), u.Key, id, "4x", "m-cancel") }()
	waitState(t, e, u.Key, "m-cancel", "running")
	e.Want(e.Cancel(u.Key, "m-cancel"), 200, "")
	e.Want(<-done, 409, "user_canceled_request")
	close(release)
	e.Want(e.Upsize(context.Background(), u.Key, id, "2x", "m-ok"), 201, "")
	e.Want(e.Cancel(u.Key, "m-ok"), 409, "request_already_completed")
	e.Want(e.Upsize(context.Background(), u.Key, 999999, "2x", ""), 404, "no_input_image (999999)")
	e.Want(e.Do(testenv.Req{Method: "GET", Path: "/metrics"}), 200, "")

	var got map[string]bool
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = map[string]bool{}
		for name := range e.Exposed() {
			got[name] = true
		}
		if got["upsize_cancel_to_stop_seconds"] || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{
		"upsize_http_request_duration_seconds", "upsize_http_requests_in_flight", "upsize_upsize_outcomes_total",
		"upsize_cancels_total", "upsize_cancel_to_answer_seconds", "upsize_queue_tasks",
		"upsize_redis_pool_connections", "upsize_redis_pool_timeouts_total", "upsize_redis_up", "upsize_worker_concurrency",
		"upsize_task_queue_wait_seconds", "upsize_task_stage_seconds", "upsize_tasks_in_progress",
		"upsize_task_bytes_total", "upsize_credits_charged_total", "upsize_task_runs_total", "upsize_cancel_to_stop_seconds",
		"go_goroutines", "process_resident_memory_bytes",
	} {
		if !got[want] {
			t.Errorf("%s is not exposed", want)
		}
	}
	// Labels never carry ids: no value with digits beyond status codes and scales.
	idLike := regexp.MustCompile(`[0-9]{4,}|req-|m-ok|m-cancel`)
	for name, mf := range e.Exposed() {
		if !strings.HasPrefix(name, "upsize_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if idLike.MatchString(l.GetValue()) {
					t.Errorf("%s{%s=%q}: an unbounded value in a label", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
	outcomes := e.Exposed()["upsize_upsize_outcomes_total"]
	seen := map[string]bool{}
	for _, m := range outcomes.GetMetric() {
		var o, r string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "outcome":
				o = l.GetValue()
			case "reason":
				r = l.GetValue()
			}
		}
		seen[o+"/"+r] = true
	}
	for _, want := range []string{"completed/", "canceled/user_canceled_request", "rejected/no_input_image"} {
		if !seen[want] {
			t.Errorf("upsize_upsize_outcomes_total lacks outcome/reason %s (has %v)", want, seen)
		}
	}
}

// Logs are JSON lines: one per HTTP request with its request id and user id, one per task with its task,
// request and user ids; API keys and the admin token never appear.
func TestLogsCarryIDsAndNoSecrets(t *testing.T) {
	var logs testlog.Buffer
	e := testenv.New(t, testenv.Options{LogTo: &logs})
	e.Configure()
	u := e.NewUser("paid", 5)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(16, 16)))
	e.Want(e.Upsize(context.Background(), u.Key, id, "2x", "log-1"), 201, "")
	e.Want(e.Cancel(u.Key, "log-2"), 200, "")
	e.Want(e.Do(testenv.Req{Method: "GET", Path: "/admin/users/1", Key: u.Key}), 401, "invalid_admin_token")
	time.Sleep(50 * time.Millisecond) // the worker's line is written after the answer
	out := logs.String()
	for _, secret := range []string{u.Key, e.AdminToken} {
		if strings.Contains(out, secret) {
			t.Fatalf("a secret is in the logs:\n%s", out)
		}
	}
	var httpLine, taskLine map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		switch {
		case m["msg"] == "http" && m["route"] == "/api/images/:id/upsize":
			httpLine = m
		case m["msg"] == "task" && m["request_id"] == "log-1":
			taskLine = m
		}
	}
	if httpLine == nil || httpLine["request_id"] != "log-1" || fmt.Sprint(httpLine["user_id"]) != fmt.Sprint(u.ID) || fmt.Sprint(httpLine["status"]) != "201" {
		t.Fatalf("upsize access line: %v", httpLine)
	}
	if taskLine == nil || taskLine["task_id"] == "" || fmt.Sprint(taskLine["user_id"]) != fmt.Sprint(u.ID) || taskLine["outcome"] != "completed" {
		t.Fatalf("task line: %v", taskLine)
	}
}

// The backlog is exported in estimated work per queue, queued and running, and goes back to zero when
// requests end.
func TestBacklogWorkIsExported(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, WaitTimeout: 50 * time.Millisecond})
	e.Configure()
	u := e.NewUser("paid", 100)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(64, 64)))
	e.Want(e.Upsize(context.Background(), u.Key, id, "2x", "work-1"), 202, "")
	work := func() map[string]float64 {
		out := map[string]float64{}
		for _, m := range e.Exposed()["upsize_backlog_work_seconds"].GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
		return out
	}
	w := work()
	if len(w) != len(jobs.Queues) || w[jobs.QueuePaidSmall] <= 0 || w[jobs.QueuePaid] != 0 {
		t.Fatalf("backlog work %v: want the small 2x in %s only", w, jobs.QueuePaidSmall)
	}
	e.Want(e.Cancel(u.Key, "work-1"), 200, "")
	if w := work(); w[jobs.QueuePaidSmall] != 0 {
		t.Fatalf("backlog work after the cancel %v", w)
	}
}
