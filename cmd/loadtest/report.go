package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// writeReport writes the JSON report to out, and the Markdown report and the SVG chart beside it.
func writeReport(out string, rep *report, r runResult) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	stem := strings.TrimSuffix(out, filepath.Ext(out))
	rep.Chart = filepath.Base(stem + ".svg")
	files := []struct {
		path  string
		write func(io.Writer) error
	}{
		{stem + ".svg", func(w io.Writer) error { return writeChart(w, r.Started, r.Requests, r.Samples) }},
		{out, func(w io.Writer) error { return writeJSON(w, rep) }},
		{stem + ".md", func(w io.Writer) error { return writeMarkdown(w, rep) }},
	}
	for _, f := range files {
		if err := writeFile(f.path, f.write); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	err = write(w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func writeJSON(w io.Writer, rep *report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

func writeMarkdown(w io.Writer, rep *report) error {
	p := &lineWriter{w: w}
	p.line("# Load test: %s against %s", rep.Mode, rep.Target)
	p.line("")
	p.line("Started %s, ran %s, stopped: %s. Seed %d.", rep.Started.Format(time.RFC3339), rep.Finished.Sub(rep.Started).Round(time.Millisecond), rep.StopReason, rep.Seed)
	p.line("")
	p.line("| | |")
	p.line("| --- | --- |")
	p.line("| requests sent | %d |", rep.Requests)
	p.line("| achieved rate | %.1f requests/s (over %.2f s of sending) |", rep.AchievedRate, rep.FirstAnswers.SendSeconds)
	p.line("| error ratio | %.1f %% (every outcome but completed and canceled) |", 100*rep.ErrorRatio)
	p.line("| peak backlog | %d tasks (pending + active over every queue) |", rep.Backlog.Peak)
	p.line("| drain time | %s |", drainText(rep.Backlog))
	p.line("")
	if rep.Scenario != nil {
		writeScenario(p, rep.Scenario)
	}
	p.line("## Outcomes")
	p.line("")
	p.line("Latency runs from sending an upsize to its outcome; for a 202 answer, to the moment following it saw its final state (the poll, or the stream's final event).")
	p.line("")
	p.line("| outcome | count | p50 | p95 | p99 | max | reasons |")
	p.line("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, o := range rep.Outcomes {
		p.line("| %s | %d | %s | %s | %s | %s | %s |", o.Outcome, o.Count, msText(o.P50Ms), msText(o.P95Ms), msText(o.P99Ms), msText(o.MaxMs), counts(o.Reasons))
	}
	p.line("")
	writeFollow(p, rep.Follow)
	p.line("## First answers (vegeta)")
	p.line("")
	p.line("Status codes: %s. Latency p50 %s, p95 %s, p99 %s, max %s.", counts(rep.FirstAnswers.StatusCodes),
		msText(rep.FirstAnswers.P50Ms), msText(rep.FirstAnswers.P95Ms), msText(rep.FirstAnswers.P99Ms), msText(rep.FirstAnswers.MaxMs))
	p.line("")
	p.line("## Cancels")
	p.line("")
	p.line("%d planned, %d sent. Answers: %s.", rep.Cancels.Planned, rep.Cancels.Sent, counts(rep.Cancels.Answers))
	p.line("")
	p.line("## Chart")
	p.line("")
	p.line("![latency of each request by outcome, and the backlog](%s)", rep.Chart)
	p.line("")
	p.line("Dots: each request's latency (left axis, logarithmic) at the moment its outcome came, coloured by outcome. Line: the backlog (right axis).")
	return p.err
}

// writeFollow says how the 202 answers were followed and, with event streams, how soon their events came.
func writeFollow(p *lineWriter, f followStats) {
	if f.Followed == 0 && f.Mode != followSSE {
		return
	}
	p.line("## Following 202 answers")
	p.line("")
	if f.Mode != followSSE {
		p.line("%d followed by polling `GET /api/requests/{id}` (`-follow %s`).", f.Followed, f.Mode)
		p.line("")
		return
	}
	p.line("%d followed by their event stream (`-follow sse`): %d by the stream alone, %d fell back to polling; %d stream(s) opened again.",
		f.Followed, f.SSE, f.Fallbacks, f.Reconnects)
	p.line("")
	p.line("| from the 202 to | count | p50 | p95 | max |")
	p.line("| --- | ---: | ---: | ---: | ---: |")
	for _, row := range []struct {
		name string
		s    *spanStats
	}{{"first event", f.FirstEvent}, {"final event", f.FinalEvent}} {
		if row.s == nil {
			p.line("| %s | 0 | | | |", row.name)
			continue
		}
		p.line("| %s | %d | %s | %s | %s |", row.name, row.s.Count, msText(row.s.P50Ms), msText(row.s.P95Ms), msText(row.s.MaxMs))
	}
	p.line("")
	p.line("Heartbeats are comments, not events. The first event is usually the state the request is in (queued, with its position), so its time is how long a client waits to hear anything.")
	p.line("")
}

// lineWriter keeps the first write error, so a writer reads as a list of lines.
type lineWriter struct {
	w   io.Writer
	err error
}

func (p *lineWriter) line(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format+"\n", args...)
	}
}

func drainText(b backlogStats) string {
	if b.DrainSeconds == nil {
		return "not seen to drain before sampling stopped (-drain-timeout passed, or the run was stopped)"
	}
	return fmt.Sprintf("%.1f s from the last request sent to an empty backlog", *b.DrainSeconds)
}

func msText(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f s", v/1000)
	}
	return fmt.Sprintf("%.1f ms", v)
}

// counts is "a ×2, b ×1" in key order; a table cell cannot hold "|".
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", strings.ReplaceAll(k, "|", "/"), m[k]))
	}
	return strings.Join(parts, ", ")
}
