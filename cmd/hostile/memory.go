package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// memory is the API's resident memory around one attack. The /metrics figures are what any operator
// sees; the /proc figures (with -api-pid) are exact: VmHWM is the kernel's own high-water mark, reset
// before the attack, so a spike between two 100 ms samples is not missed.
type memory struct {
	Before  int64 `json:"before_bytes"` // process_resident_memory_bytes before the attack
	Peak    int64 `json:"peak_bytes"`   // the largest sample during it (every ~100 ms)
	After   int64 `json:"after_bytes"`  // after it, and -settle
	Samples int   `json:"samples"`

	HWM        int64 `json:"vm_hwm_bytes,omitempty"` // VmHWM: peak since the reset before the attack
	HWMReset   bool  `json:"vm_hwm_reset"`           // false: VmHWM is the process's lifetime peak
	ProcBefore int64 `json:"vm_rss_before_bytes,omitempty"`
	ProcAfter  int64 `json:"vm_rss_after_bytes,omitempty"`
}

// PeakGrowth is the attack's cost: the best peak known (VmHWM if reset, else the samples) over before.
func (m *memory) PeakGrowth() int64 {
	peak, before := m.Peak, m.Before
	if m.HWMReset && m.HWM > 0 {
		peak, before = max(m.HWM, m.Peak), m.ProcBefore
	}
	return peak - before
}

// absolutePeak is the highest RSS known during the attack.
func (m *memory) absolutePeak() int64 {
	if m.HWMReset {
		return max(m.Peak, m.HWM)
	}
	return m.Peak
}

func (m *memory) String() string {
	s := fmt.Sprintf("RSS %s before, %s peak (%d samples of /metrics), %s after", fmtBytes(m.Before),
		fmtBytes(m.Peak), m.Samples, fmtBytes(m.After))
	if m.HWM > 0 {
		since := "since the reset before the attack"
		if !m.HWMReset {
			since = "lifetime: the reset failed"
		}
		s += fmt.Sprintf("; /proc: VmRSS %s → %s, VmHWM %s (%s)", fmtBytes(m.ProcBefore), fmtBytes(m.ProcAfter), fmtBytes(m.HWM), since)
	}
	return s
}

// memSampler reads the API's memory. It has a client of its own, so that an attack filling its own
// connection pool does not starve the samples.
type memSampler struct {
	metricsURL string
	pid        int
	hc         *http.Client
	settle     time.Duration
}

func newMemSampler(cfg *config) *memSampler {
	return &memSampler{
		metricsURL: cfg.Base.String() + "/metrics",
		pid:        cfg.APIPid,
		hc:         &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}},
		settle:     cfg.Settle,
	}
}

// rss is process_resident_memory_bytes from the API's /metrics.
func (s *memSampler) rss(ctx context.Context) (int64, error) {
	body, err := s.metrics(ctx)
	if err != nil {
		return 0, err
	}
	v, err := metricValue(body, "process_resident_memory_bytes")
	return int64(v), err
}

// now is the API's RSS: VmRSS with -api-pid (exact, and no request to the API), else /metrics.
func (s *memSampler) now(ctx context.Context) (int64, error) {
	if s.pid > 0 {
		st, err := procStatus(s.pid)
		return st.RSS, err
	}
	return s.rss(ctx)
}

// source names where now reads.
func (s *memSampler) source() string {
	if s.pid > 0 {
		return "VmRSS"
	}
	return "/metrics"
}

// metrics is the API's /metrics text.
func (s *memSampler) metrics(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.metricsURL, nil)
	if err != nil {
		return nil, err
	}
	res, err := s.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: HTTP %d", res.StatusCode)
	}
	return io.ReadAll(res.Body)
}

// watch runs attack while sampling the API's memory every ~100 ms, and reads it before and after.
func (s *memSampler) watch(ctx context.Context, attack func()) (*memory, error) {
	m := &memory{}
	var err error
	if m.Before, err = s.rss(ctx); err != nil {
		return nil, err
	}
	m.Peak = m.Before
	if s.pid > 0 {
		// Writing 5 to clear_refs resets VmHWM to the current RSS (proc(5)); it needs to own the process.
		m.HWMReset = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", s.pid), []byte("5"), 0) == nil
		if st, err := procStatus(s.pid); err == nil {
			m.ProcBefore = st.RSS
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if n, err := s.rss(ctx); err == nil {
				m.Samples++
				m.Peak = max(m.Peak, n)
			}
		}
	})
	attack()
	close(stop)
	wg.Wait()
	select {
	case <-time.After(s.settle):
	case <-ctx.Done():
	}
	if m.After, err = s.rss(ctx); err != nil {
		return m, err
	}
	m.Peak = max(m.Peak, m.After)
	if s.pid > 0 {
		if st, err := procStatus(s.pid); err == nil {
			m.HWM, m.ProcAfter = st.HWM, st.RSS
		}
	}
	return m, nil
}

// metricValue reads one unlabelled sample from Prometheus' text format.
func metricValue(body []byte, name string) (float64, error) {
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name+" ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q: %w", name, rest, err)
		}
		return f, nil
	}
	return 0, fmt.Errorf("no %s in /metrics", name)
}

// seriesCount is the number of samples in a /metrics text (lines that are neither comments nor blank):
// one per series, whatever their values.
func seriesCount(body []byte) int {
	n := 0
	for line := range strings.SplitSeq(string(body), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			n++
		}
	}
	return n
}

// status is what /proc/<pid>/status says of a process's memory.
type status struct{ RSS, HWM int64 }

func procStatus(pid int) (status, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return status{}, err
	}
	return parseStatus(string(b))
}

// parseStatus reads VmRSS and VmHWM (given in kB, which the kernel means as KiB).
func parseStatus(text string) (status, error) {
	var st status
	for line := range strings.SplitSeq(text, "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return status{}, fmt.Errorf("%s: %q", name, val)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return status{}, fmt.Errorf("%s: %w", name, err)
		}
		if name == "VmRSS" {
			st.RSS = kb << 10
		} else {
			st.HWM = kb << 10
		}
	}
	if st.RSS == 0 || st.HWM == 0 {
		return status{}, errors.New("no VmRSS or VmHWM in /proc status (a kernel thread?)")
	}
	return st, nil
}
