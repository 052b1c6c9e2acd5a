package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"
)

// result is what one attack found: its expectations (each passed or failed), facts worth reading
// (counts of answers, rates), its duration and the API's memory around it.
type result struct {
	Name    string   `json:"name"`
	What    string   `json:"what"`   // the attack, as sent
	Review  string   `json:"review"` // what the security review measured before the fix
	Checks  []check  `json:"checks"`
	Notes   []string `json:"notes,omitempty"`
	TookMS  float64  `json:"took_ms"`
	Memory  *memory  `json:"memory,omitempty"`
	Skipped string   `json:"skipped,omitempty"` // why it did not run (a missing flag); not a failure
	Error   string   `json:"error,omitempty"`   // it could not run to its end: a failure
}

// check is one expectation: what was wanted, what came, and whether that is good enough.
type check struct {
	What string `json:"what"`
	Want string `json:"want"`
	Got  string `json:"got"`
	OK   bool   `json:"ok"`
}

// expect records an expectation.
func (r *result) expect(what string, ok bool, want, got string) {
	r.Checks = append(r.Checks, check{What: what, Want: want, Got: got, OK: ok})
}

// note records a fact that is not judged.
func (r *result) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// fail records that the attack could not run to its end (setup refused, connection refused...).
func (r *result) fail(err error) {
	if r.Error == "" {
		r.Error = err.Error()
	}
}

// passed: nothing failed. A skipped attack passes: it proved nothing, and says so.
func (r *result) passed() bool {
	if r.Error != "" {
		return false
	}
	for _, c := range r.Checks {
		if !c.OK {
			return false
		}
	}
	return true
}

func (r *result) status() string {
	switch {
	case r.Skipped != "":
		return "SKIP"
	case r.passed():
		return "PASS"
	default:
		return "FAIL"
	}
}

// writeText prints one attack's result for a human.
func writeText(w io.Writer, r *result) {
	fmt.Fprintf(w, "\n[%s] %s — %s\n", r.Name, r.What, r.status())
	if r.Review != "" {
		fmt.Fprintf(w, "  before the fix: %s\n", r.Review)
	}
	if r.Skipped != "" {
		fmt.Fprintf(w, "  skipped: %s\n", r.Skipped)
		return
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  %s\n", n)
	}
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %s: want %s; got %s\n", mark, c.What, c.Want, c.Got)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "  FAIL could not run: %s\n", r.Error)
	}
	if r.Memory != nil {
		fmt.Fprintf(w, "  memory: %s\n", r.Memory)
	}
	fmt.Fprintf(w, "  took %s\n", fmtDur(time.Duration(r.TookMS*float64(time.Millisecond))))
}

// summary is the last lines: what passed, what failed, and what only a test can show.
func writeSummary(w io.Writer, results []*result) {
	var passed, failed, skipped []string
	for _, r := range results {
		switch r.status() {
		case "PASS":
			passed = append(passed, r.Name)
		case "SKIP":
			skipped = append(skipped, r.Name)
		default:
			failed = append(failed, r.Name)
		}
	}
	fmt.Fprintf(w, "\nsummary: %d attacks: %d passed, %d failed%s, %d skipped%s\n", len(results),
		len(passed), len(failed), listed(failed), len(skipped), listed(skipped))
	fmt.Fprintln(w, "not attacked here (they need to kill or stall processes); proved by tests instead:")
	for _, t := range coveredByTests {
		fmt.Fprintf(w, "  %s: %s\n", t.Attack, t.Command)
	}
}

func listed(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return " (" + strings.Join(names, ", ") + ")"
}

// testCovered is an attack of the review that this tool does not run, and the test that proves it.
type testCovered struct {
	Attack  string `json:"attack"`
	Command string `json:"command"`
}

var coveredByTests = []testCovered{
	{"5. credits kept for a dropped request (queued request outlives REQUEST_TTL)", "go test -run TestQueuedRequestOutlivesRequestTTL ./internal/httpapi/"},
	{"5. lost request state → failed and refunded", "go test -run TestTaskOfALostRequestRefunds ./internal/jobs/"},
	{"9. blob garbage after kill -9 (janitor)", "go test ./internal/janitor/"},
}

// report is the JSON file of -json.
type report struct {
	Base           string        `json:"base"`
	Worker         string        `json:"worker,omitempty"`
	Scale          float64       `json:"scale"`
	Started        time.Time     `json:"started"`
	Finished       time.Time     `json:"finished"`
	Passed         bool          `json:"passed"`
	Attacks        []*result     `json:"attacks"`
	CoveredByTests []testCovered `json:"covered_by_tests"`
}

func writeJSONFile(path string, rep report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// tally counts answers by label ("201", "503 server_busy", "error: reset").
type tally map[string]int

func (t tally) add(label string) { t[label]++ }

// only reports whether every answer has one of the labels.
func (t tally) only(labels ...string) bool {
	for l := range t {
		if !slices.Contains(labels, l) {
			return false
		}
	}
	return true
}

func (t tally) total() int {
	n := 0
	for _, c := range t {
		n += c
	}
	return n
}

// String lists the labels, most frequent first: "403×1998, error: reset×2".
func (t tally) String() string {
	if len(t) == 0 {
		return "none"
	}
	labels := make([]string, 0, len(t))
	for l := range t {
		labels = append(labels, l)
	}
	sort.Slice(labels, func(i, j int) bool {
		if t[labels[i]] != t[labels[j]] {
			return t[labels[i]] > t[labels[j]]
		}
		return labels[i] < labels[j]
	})
	parts := make([]string, len(labels))
	for i, l := range labels {
		parts[i] = fmt.Sprintf("%s×%d", l, t[l])
	}
	return strings.Join(parts, ", ")
}

// fmtDur rounds a duration to what a reader compares: "3ms", "1.24s", "61.0s".
func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < 10*time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	default:
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
}

// fmtBytes prints a size in binary units, those of the settings (UPLOAD_MEMORY is 128 MiB) and of
// /proc (KiB).
func fmtBytes(n int64) string {
	neg := ""
	if n < 0 {
		neg, n = "-", -n
	}
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%s%d B", neg, n)
	case n < 1<<20:
		return fmt.Sprintf("%s%.1f KiB", neg, float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%s%.1f MiB", neg, float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%s%.2f GiB", neg, float64(n)/(1<<30))
	}
}
