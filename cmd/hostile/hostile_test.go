package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestParseBaseOnlyLoopback(t *testing.T) {
	for base, ok := range map[string]bool{
		"http://127.0.0.1:8080":        true,
		"http://127.3.4.5":             true,
		"http://localhost:8080/":       true,
		"http://LOCALHOST":             true,
		"http://[::1]:8080":            true,
		"https://127.0.0.1":            false, // raw attacks speak plain HTTP
		"http://10.0.0.1:8080":         false,
		"http://0.0.0.0:8080":          false,
		"http://[::2]:8080":            false,
		"http://example.com":           false,
		"http://localhost.example.com": false,
		"http://127.0.0.1.nip.io":      false,
		"127.0.0.1:8080":               false,
		"http://":                      false,
	} {
		u, err := parseBase("-base", base)
		if (err == nil) != ok {
			t.Errorf("parseBase(%q): err %v, want ok=%v", base, err, ok)
		}
		if err == nil && strings.HasSuffix(u.String(), "/") {
			t.Errorf("parseBase(%q) = %q keeps a trailing slash", base, u)
		}
	}
}

func TestParseConfig(t *testing.T) {
	t.Setenv("ADMIN_TOKEN", "")
	parse := func(args ...string) (*config, error) { return parseConfig(args, io.Discard) }
	if _, err := parse("-admin-token", "x", "-base", "http://192.0.2.1:8080"); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("remote -base: err %v", err)
	}
	if _, err := parse("-admin-token", "x", "-worker", "http://192.0.2.1:9090"); err == nil {
		t.Error("remote -worker accepted")
	}
	if _, err := parse(); err == nil || !strings.Contains(err.Error(), "admin token") {
		t.Errorf("no token: err %v", err)
	}
	for _, s := range []string{"0", "-1", "1.5"} {
		if _, err := parse("-admin-token", "x", "-scale", s); err == nil {
			t.Errorf("-scale %s accepted", s)
		}
	}
	if _, err := parse("-admin-token", "x", "-only", "methods,nonsense"); err == nil || !strings.Contains(err.Error(), "nonsense") {
		t.Errorf("unknown attack: err %v", err)
	}
	c, err := parse("-admin-token", "x", "-worker", "http://127.0.0.1:9090/healthz", "-only", "small, methods,small", "-scale", "0.1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Worker.String() != "http://127.0.0.1:9090" {
		t.Errorf("worker %q: the health path is not stripped", c.Worker)
	}
	if fmt.Sprint(c.Only) != "[small methods]" || !c.selected("small") || c.selected("tombstones") {
		t.Errorf("only %v", c.Only)
	}
	if c.scaled(30000, 100) != 3000 || c.scaled(40, 4) != 4 || c.scaled(20, 4) != 4 {
		t.Errorf("scaled: %d %d %d", c.scaled(30000, 100), c.scaled(40, 4), c.scaled(20, 4))
	}
	t.Setenv("ADMIN_TOKEN", "from-env")
	if c, err := parse(); err != nil || c.AdminToken != "from-env" || len(c.Only) != 0 || !c.selected("methods") {
		t.Errorf("defaults: %+v %v", c, err)
	}
}

func TestAttackNamesAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, a := range attacks {
		if seen[a.name] || a.name == "" || a.what == nil || a.setup == nil {
			t.Errorf("attack %q: duplicate or incomplete", a.name)
		}
		seen[a.name] = true
	}
}

func TestResultStatusAndText(t *testing.T) {
	r := &result{Name: "x", What: "sends things", Review: "was bad"}
	r.expect("status", true, "422 in < 100ms", "422 in 3ms")
	if r.status() != "PASS" {
		t.Fatalf("status %s", r.status())
	}
	r.expect("count", false, "≤ 1000", "20000")
	r.note("answers: %s", tally{"200": 3})
	r.TookMS = 1500
	r.Memory = &memory{Before: 100 << 20, Peak: 150 << 20, After: 101 << 20, Samples: 3}
	var b bytes.Buffer
	writeText(&b, r)
	out := b.String()
	for _, want := range []string{
		"[x] sends things — FAIL", "before the fix: was bad", "answers: 200×3",
		"ok   status: want 422 in < 100ms; got 422 in 3ms", "FAIL count: want ≤ 1000; got 20000",
		"RSS 100.0 MiB before, 150.0 MiB peak (3 samples of /metrics), 101.0 MiB after", "took 1.50s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	skipped := &result{Name: "s", Skipped: "needs -redis"}
	broken := &result{Name: "b"}
	broken.fail(errors.New("setup: refused"))
	broken.fail(errors.New("second"))
	if skipped.status() != "SKIP" || !skipped.passed() || broken.status() != "FAIL" || broken.Error != "setup: refused" {
		t.Errorf("skipped %s, broken %s %q", skipped.status(), broken.status(), broken.Error)
	}
	b.Reset()
	writeSummary(&b, []*result{r, skipped, broken, {Name: "fine"}})
	if !strings.Contains(b.String(), "4 attacks: 1 passed, 2 failed (x, b), 1 skipped (s)") ||
		!strings.Contains(b.String(), "go test ./internal/janitor/") {
		t.Errorf("summary:\n%s", b.String())
	}
}

func TestJSONReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.json")
	r := &result{Name: "x", Memory: &memory{Before: 1, Peak: 2}}
	r.expect("a", true, "w", "g")
	if err := writeJSONFile(path, report{Passed: true, Attacks: []*result{r}, CoveredByTests: coveredByTests}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	var back struct {
		Passed  bool `json:"passed"`
		Attacks []struct {
			Checks []check `json:"checks"`
			Memory struct {
				Peak int64 `json:"peak_bytes"`
			} `json:"memory"`
		} `json:"attacks"`
	}
	if err := json.Unmarshal(b, &back); err != nil || !back.Passed || len(back.Attacks) != 1 ||
		!back.Attacks[0].Checks[0].OK || back.Attacks[0].Memory.Peak != 2 {
		t.Fatalf("report %s: %v", b, err)
	}
}

func TestTally(t *testing.T) {
	tl := tally{}
	for _, l := range []string{"403", "403", "error: reset", "201", "201", "201"} {
		tl.add(l)
	}
	if got := tl.String(); got != "201×3, 403×2, error: reset×1" {
		t.Errorf("String %q", got)
	}
	if tl.total() != 6 || tl.only("201", "403") || !tl.only("201", "403", "error: reset") {
		t.Errorf("total %d, only wrong", tl.total())
	}
	if (tally{}).String() != "none" || !(tally{}).only("x") {
		t.Error("empty tally")
	}
}

func TestFormats(t *testing.T) {
	for d, want := range map[time.Duration]string{
		500 * time.Microsecond: "500µs", 3 * time.Millisecond: "3ms", 1240 * time.Millisecond: "1.24s", 61 * time.Second: "61.0s",
	} {
		if got := fmtDur(d); got != want {
			t.Errorf("fmtDur(%s) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[int64]string{
		512: "512 B", 10 << 10: "10.0 KiB", 128 << 20: "128.0 MiB", 5 << 29: "2.50 GiB", -(3 << 20): "-3.0 MiB",
	} {
		if got := fmtBytes(n); got != want {
			t.Errorf("fmtBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

const sampleMetrics = `# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.23456e+08
process_resident_memory_bytes_other 5
process_cpu_seconds_total 12.5
http_duration_bucket{le="0.1",method="other"} 3

`

func TestMetricsParsing(t *testing.T) {
	if v, err := metricValue([]byte(sampleMetrics), "process_resident_memory_bytes"); err != nil || v != 123456000 {
		t.Errorf("rss %v %v", v, err)
	}
	if v, err := metricValue([]byte(sampleMetrics), "process_cpu_seconds_total"); err != nil || v != 12.5 {
		t.Errorf("cpu %v %v", v, err)
	}
	if _, err := metricValue([]byte(sampleMetrics), "absent"); err == nil {
		t.Error("absent metric found")
	}
	if n := seriesCount([]byte(sampleMetrics)); n != 4 {
		t.Errorf("series %d", n)
	}
}

func TestParseStatus(t *testing.T) {
	st, err := parseStatus("Name:\tapi\nVmPeak:\t  900000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t   102400 kB\nThreads:\t9\n")
	if err != nil || st.HWM != 200<<20 || st.RSS != 100<<20 {
		t.Fatalf("%+v %v", st, err)
	}
	if _, err := parseStatus("Name:\tkthreadd\n"); err == nil {
		t.Error("a status without memory parsed")
	}
	if _, err := parseStatus("VmRSS:\t12 MB\nVmHWM:\t1 kB\n"); err == nil {
		t.Error("a unit other than kB parsed")
	}
	if st, err := procStatus(os.Getpid()); err != nil || st.RSS <= 0 || st.HWM < st.RSS {
		t.Errorf("own status %+v %v", st, err)
	}
}

func TestPeakGrowth(t *testing.T) {
	m := memory{Before: 100, Peak: 150, After: 110}
	if m.PeakGrowth() != 50 || m.absolutePeak() != 150 {
		t.Errorf("samples only: %d %d", m.PeakGrowth(), m.absolutePeak())
	}
	// With a reset VmHWM, the kernel's peak counts (it saw the spike between two samples).
	m.HWM, m.HWMReset, m.ProcBefore = 300, true, 90
	if m.PeakGrowth() != 210 || m.absolutePeak() != 300 {
		t.Errorf("with VmHWM: %d %d", m.PeakGrowth(), m.absolutePeak())
	}
	// A VmHWM that could not be reset is the process's lifetime peak: not this attack's.
	m.HWMReset = false
	if m.PeakGrowth() != 50 || m.absolutePeak() != 150 {
		t.Errorf("lifetime VmHWM counted: %d %d", m.PeakGrowth(), m.absolutePeak())
	}
}

// The sampler against a fake /metrics whose RSS rises during the attack and falls after it.
func TestMemSamplerWatch(t *testing.T) {
	var rss atomic.Int64
	rss.Store(100 << 20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "process_resident_memory_bytes %d\n", rss.Load())
	}))
	defer srv.Close()
	s := &memSampler{metricsURL: srv.URL + "/metrics", hc: srv.Client(), settle: 10 * time.Millisecond}
	m, err := s.watch(context.Background(), func() {
		rss.Store(300 << 20)
		time.Sleep(350 * time.Millisecond)
		rss.Store(120 << 20)
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Before != 100<<20 || m.Peak != 300<<20 || m.After != 120<<20 || m.Samples < 2 || m.PeakGrowth() != 200<<20 {
		t.Fatalf("%+v", m)
	}
}

func TestAnswers(t *testing.T) {
	if r := envelopeReason([]byte(`{"success":false,"code":422,"data":"invalid_image"}`)); r != "invalid_image" {
		t.Errorf("reason %q", r)
	}
	if r := envelopeReason([]byte(`{"data":"x"}`)); r != "" {
		t.Errorf("not an envelope: %q", r)
	}
	a := answer{Status: 503, Reason: "server_busy"}
	if a.label() != "503 server_busy" || !a.is(503, "") || !a.is(503, "server_busy") || a.is(503, "queue_full") {
		t.Errorf("label %q", a.label())
	}
	if l := (answer{Status: 201}).label(); l != "201" {
		t.Errorf("label %q", l)
	}
	reset := &url.Error{Op: "Post", URL: "x", Err: &net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}}
	for err, want := range map[error]string{
		reset: "reset", io.ErrUnexpectedEOF: "closed", os.ErrDeadlineExceeded: "timeout", errors.New("?"): "other",
	} {
		if got := errKind(err); got != want {
			t.Errorf("errKind(%v) = %q, want %q", err, got, want)
		}
	}
	if l := (answer{Err: reset}).label(); l != "error: reset" || (answer{Err: reset}).is(0, "") {
		t.Errorf("error label %q", l)
	}
}

func TestHostPort(t *testing.T) {
	for raw, want := range map[string]string{
		"http://127.0.0.1:8080": "127.0.0.1:8080", "http://localhost": "localhost:80", "http://[::1]:9": "[::1]:9", "http://[::1]": "[::1]:80",
	} {
		u, _ := url.Parse(raw)
		if got := hostPort(u); got != want {
			t.Errorf("hostPort(%s) = %q, want %q", raw, got, want)
		}
	}
}

func TestFanOutRunsEachOnce(t *testing.T) {
	var mu sync.Mutex
	seen := map[int]int{}
	var running, most atomic.Int32
	fanOut(100, 7, func(i int) {
		n := running.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(time.Millisecond)
		running.Add(-1)
		mu.Lock()
		seen[i]++
		mu.Unlock()
	})
	if len(seen) != 100 || most.Load() > 7 {
		t.Fatalf("%d indexes, %d at once", len(seen), most.Load())
	}
	for i, n := range seen {
		if n != 1 {
			t.Fatalf("index %d ran %d times", i, n)
		}
	}
}

// A raw connection reads an answer and notices the server closing.
func TestRawConnReadsAnswerAndClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 512)
		_, _ = c.Read(buf)
		_, _ = c.Write([]byte("HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"))
		c.Close()
	}()
	c, err := dialRaw(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"))
	res, body, closed, err := c.readAnswer("POST", time.Second, time.Second)
	if err != nil || res.StatusCode != 403 || string(body) != "{}" || !closed {
		t.Fatalf("%v %q closed=%v %v", res, body, closed, err)
	}
}
