// Package e2e runs the real binaries (cmd/api, cmd/worker) as processes and sends them signals.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"upsize/internal/testenv"
	"upsize/internal/testimg"
	"upsize/internal/testlog"
	"upsize/internal/testredis"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "upsize-e2e")
	if err != nil {
		panic(err)
	}
	out, err := exec.Command("go", "build", "-race", "-o", dir+"/", "upsize/cmd/api", "upsize/cmd/worker").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building the binaries: %v\n%s", err, out)
		os.Exit(1)
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running binary.
type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	addr string
	logs *testlog.Buffer
	done chan error
}

// start runs a binary with env on a free port and waits for it to announce its address.
func start(t testing.TB, name string, env map[string]string) *proc {
	t.Helper()
	return startFrom(t, bin, name, env)
}

// startFrom is start for a binary built into dir.
func startFrom(t testing.TB, dir, name string, env map[string]string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, logs: &testlog.Buffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(filepath.Join(dir, name))
	p.cmd.Env = append(os.Environ(), "HTTP_ADDR=127.0.0.1:0")
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	stdout, _ := p.cmd.StdoutPipe()
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.logs.Write([]byte(line + "\n"))
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && (m["msg"] == "listening" || m["msg"] == "working") {
				addr <- m["addr"].(string)
			}
		}
	}()
	go func() { p.done <- p.cmd.Wait() }()
	select {
	case p.addr = <-addr:
	case err := <-p.done:
		t.Fatalf("%s exited at start: %v\n%s", name, err, p.logs)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start\n%s", name, p.logs)
	}
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("--- %s logs\n%s", name, p.logs)
		}
	})
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(within time.Duration) {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			p.t.Fatalf("%s exited with %v after SIGTERM", p.name, err)
		}
	case <-time.After(within):
		p.t.Fatalf("%s still running %s after SIGTERM", p.name, within)
	}
}

// service is a Redis database and a blob directory shared by the processes of a test.
type service struct {
	t     testing.TB
	env   map[string]string
	token string
}

func newService(t testing.TB) *service {
	rdb := testredis.Redis(t)
	token := "e2e-admin"
	return &service{t: t, token: token, env: map[string]string{
		"REDIS_URL": testredis.RedisURL(rdb), "BLOB_URL": testenv.BlobURL(t), "ADMIN_TOKEN": token, "LOG_LEVEL": "info",
	}}
}

func (s *service) with(extra map[string]string) map[string]string {
	m := map[string]string{}
	for k, v := range s.env {
		m[k] = v
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

type answer struct {
	status int
	body   map[string]any
}

func call(t testing.TB, method, url string, hdr map[string]string, body []byte, ct string) answer {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	a := answer{status: res.StatusCode}
	json.Unmarshal(b, &a.body)
	return a
}

// setup configures the admin defaults and returns a paid user's id and key, and a 1024x1024 noise image.
func (s *service) setup(api *proc, credits int) (int64, string, int64) {
	t := s.t
	base := "http://" + api.addr
	admin := map[string]string{"Authorization": "Bearer " + s.token}
	js := func(v any) []byte { b, _ := json.Marshal(v); return b }
	call(t, "PUT", base+"/admin/models/upsize", admin, js(map[string]string{"model": "lanczos3"}), "application/json")
	call(t, "PUT", base+"/admin/credit-costs/upsize", admin, js(map[string]int{"2x": 1, "4x": 2, "8x": 4}), "application/json")
	u := call(t, "POST", base+"/admin/users", admin, js(map[string]any{"plan": "paid", "credits": credits}), "application/json")
	uid := int64(u.body["user"].(map[string]any)["id"].(float64))
	k := call(t, "POST", base+"/admin/users/"+strconv.FormatInt(uid, 10)+"/api-keys", admin, []byte("{}"), "application/json")
	key := k.body["apiKey"].(string)
	ct, body := testenv.Multipart(testimg.EncodePNG(testimg.Noise(1024, 1024, 1)), nil)
	up := call(t, "POST", base+"/api/images", map[string]string{"X-Api-Key": key}, body, ct)
	if up.status != 201 {
		t.Fatalf("upload: %d %v", up.status, up.body)
	}
	return uid, key, int64(up.body["image"].(map[string]any)["imageId"].(float64))
}

func (s *service) credits(api *proc, uid int64) int {
	a := call(s.t, "GET", "http://"+api.addr+"/admin/users/"+strconv.FormatInt(uid, 10), map[string]string{"Authorization": "Bearer " + s.token}, nil, "")
	return int(a.body["user"].(map[string]any)["credits"].(float64))
}

func upsize(t testing.TB, api *proc, key string, image int64, scale, rid string) answer {
	return call(t, "POST", fmt.Sprintf("http://%s/api/images/%d/upsize", api.addr, image),
		map[string]string{"X-Api-Key": key, "X-Request-Id": rid}, []byte(`{"scaleSize":"`+scale+`"}`), "application/json")
}

// waitState polls GET /api/requests/{rid} (through whichever API is up) until the state is reached.
func waitState(t testing.TB, api *proc, key, rid, state string, within time.Duration) answer {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		a := call(t, "GET", "http://"+api.addr+"/api/requests/"+rid, map[string]string{"X-Api-Key": key}, nil, "")
		if a.status == 200 && a.body["state"] == state {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s: %d %v, want state %s", rid, a.status, a.body, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func imageID(a answer) string { return fmt.Sprint(a.body["image"].(map[string]any)["imageId"]) }

// SIGTERM to a worker in the middle of a task, with a shutdown timeout shorter than the task: asynq hands
// the task back, another worker runs it, every waiting upsize still answers 201, and nothing is charged
// twice. The task queued behind it is untouched and runs too.
func TestWorkerSIGTERMMidTaskLosesNothing(t *testing.T) {
	s := newService(t)
	api := start(t, "api", s.with(nil))
	w1 := start(t, "worker", s.with(map[string]string{"WORKER_CONCURRENCY": "1", "SHUTDOWN_TIMEOUT": "300ms"}))
	uid, key, img := s.setup(api, 10)

	answers := make(chan answer, 2)
	for _, rid := range []string{"wt-1", "wt-2"} {
		go func() { answers <- upsize(t, api, key, img, "4x", rid) }()
	}
	waitAnyRunning(t, api, key, "wt-1", "wt-2")
	time.Sleep(300 * time.Millisecond) // well inside the ~3 s task
	w1.stop(15 * time.Second)
	start(t, "worker", s.with(map[string]string{"WORKER_CONCURRENCY": "2"}))

	seen := map[string]bool{}
	for i := 0; i < 2; i++ {
		select {
		case a := <-answers:
			if a.status != 201 {
				t.Fatalf("upsize answered %d %v", a.status, a.body)
			}
			seen[imageID(a)] = true
		case <-time.After(90 * time.Second):
			t.Fatal("upsize did not answer after the restart")
		}
	}
	if len(seen) != 2 {
		t.Fatalf("two requests, images %v", seen)
	}
	if c := s.credits(api, uid); c != 10-2*2 {
		t.Fatalf("credits %d, want 6 (two 4x at cost 2, each charged once)", c)
	}
	for _, rid := range []string{"wt-1", "wt-2"} {
		if a := upsize(t, api, key, img, "4x", rid); a.status != 201 || !seen[imageID(a)] {
			t.Fatalf("%s resent: %d %v", rid, a.status, a.body)
		}
	}
}

// SIGTERM to a worker whose shutdown timeout covers the task: the running task finishes before the
// process exits.
func TestWorkerSIGTERMFinishesTheRunningTask(t *testing.T) {
	s := newService(t)
	api := start(t, "api", s.with(nil))
	w := start(t, "worker", s.with(map[string]string{"WORKER_CONCURRENCY": "1", "SHUTDOWN_TIMEOUT": "60s"}))
	uid, key, img := s.setup(api, 4)
	got := make(chan answer, 1)
	go func() { got <- upsize(t, api, key, img, "2x", "fin-1") }()
	waitState(t, api, key, "fin-1", "running", 10*time.Second)
	w.stop(60 * time.Second)
	select {
	case a := <-got:
		if a.status != 201 {
			t.Fatalf("upsize answered %d %v", a.status, a.body)
		}
	default:
		// The worker exited; the answer is on its way from the API (woken by the completion).
		if a := <-got; a.status != 201 {
			t.Fatalf("upsize answered %d %v", a.status, a.body)
		}
	}
	if c := s.credits(api, uid); c != 3 {
		t.Fatalf("credits %d, want 3", c)
	}
	if !strings.Contains(w.logs.String(), `"outcome":"completed"`) {
		t.Fatal("the stopping worker did not complete its task")
	}
}

// SIGTERM to an API with a waiting upsize: readiness turns 503 at once, the waiting request answers 202
// before the API exits, the work goes on, and another API reports it completed; charged once.
func TestAPISIGTERMWithWaitingRequests(t *testing.T) {
	s := newService(t)
	drain := map[string]string{"DRAIN_DELAY": "500ms", "DRAIN_TIMEOUT": "2s"}
	api := start(t, "api", s.with(drain))
	start(t, "worker", s.with(map[string]string{"WORKER_CONCURRENCY": "1"}))
	uid, key, img := s.setup(api, 8)
	got := make(chan answer, 1)
	go func() { got <- upsize(t, api, key, img, "8x", "api-1") }() // ~13 s: still running through the drain
	waitState(t, api, key, "api-1", "running", 10*time.Second)

	api.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(100 * time.Millisecond)
	if r := call(t, "GET", "http://"+api.addr+"/readyz", nil, nil, ""); r.status != 503 {
		t.Fatalf("/readyz during drain: %d, want 503", r.status)
	}
	select {
	case a := <-got:
		if a.status != 202 || a.body["data"].(map[string]any)["requestId"] != "api-1" {
			t.Fatalf("waiting upsize answered %d %v, want 202", a.status, a.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiting upsize did not answer during the drain")
	}
	select {
	case err := <-api.done:
		if err != nil {
			t.Fatalf("api exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("api did not exit")
	}
	api2 := start(t, "api", s.with(nil))
	done := waitState(t, api2, key, "api-1", "completed", 60*time.Second)
	if a := upsize(t, api2, key, img, "8x", "api-1"); a.status != 201 || imageID(a) != imageID(done) {
		t.Fatalf("resent after the restart: %d %v", a.status, a.body)
	}
	if c := s.credits(api2, uid); c != 4 {
		t.Fatalf("credits %d, want 4 (one 8x at cost 4)", c)
	}
}

func waitAnyRunning(t testing.TB, api *proc, key string, rids ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		for _, rid := range rids {
			a := call(t, "GET", "http://"+api.addr+"/api/requests/"+rid, map[string]string{"X-Api-Key": key}, nil, "")
			if a.body["state"] == "running" {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no request started running")
}
