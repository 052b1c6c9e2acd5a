package main

import (
	"fmt"
	"strings"
)

// writeScenario is the scenario's section of the Markdown report.
func writeScenario(p *lineWriter, s *scenarioReport) {
	p.line("## Scenario: %s", s.Name)
	p.line("")
	switch {
	case s.HeavyBurst != nil:
		writeHeavyBurst(p, s.HeavyBurst)
	case s.Fairness != nil:
		writeFairness(p, s.Fairness)
	}
}

func jobText(j jobInfo) string {
	q := j.Queue
	if j.MoreQueue != "" {
		q = "first " + j.Queue + ", then " + j.MoreQueue
	}
	return fmt.Sprintf("`%s`, estimated %s (%s; %s)", j.Spec, msText(j.EstimateMs), j.Class, q)
}

func writeHeavyBurst(p *lineWriter, h *heavyBurstReport) {
	p.line("Heavy: %s, %d at once. Small: %s, one after another. Phases: %s.", jobText(h.Heavy), h.HeavyN, jobText(h.Small), strings.Join(h.Phases, ", "))
	p.line("")
	p.line("Latency: sending → outcome, as the client saw it. Queue wait (admitted → started) and run (started → finished): the service's record of each request.")
	p.line("")
	p.line("| small upsizes | count | completed | p50 | p95 | max | queue wait p50 / p95 | run p50 / p95 | queues |")
	p.line("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, row := range []struct {
		name string
		s    *latencySummary
	}{{"idle (no burst)", h.Idle}, {"during the heavy burst", h.During}} {
		if row.s != nil {
			s := row.s
			p.line("| %s | %d | %d | %s | %s | %s | %s / %s | %s / %s | %s |", row.name, s.Count, s.Completed, msText(s.P50Ms), msText(s.P95Ms),
				msText(s.MaxMs), msText(s.WaitP50Ms), msText(s.WaitP95Ms), msText(s.RunP50Ms), msText(s.RunP95Ms), counts(s.Queues))
		}
	}
	p.line("")
	if h.SmallBoundMs != nil {
		verdict := "**met**"
		if !*h.SmallTargetMet {
			verdict = "**not met**"
		}
		p.line("Target: p95 during the burst at most 2 × the idle p95 + 100 ms = %s: %s.", msText(*h.SmallBoundMs), verdict)
		p.line("")
	}
	p.line("| heavy burst | count | completed | span | completed/s | latency p50 | latency max | run p50 / p95 | queues |")
	p.line("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, row := range []struct {
		name string
		t    *throughput
	}{{"with the small stream", h.Burst}, {"alone", h.HeavyOnly}} {
		if row.t != nil {
			t := row.t
			p.line("| %s | %d | %d | %.1f s | %.3f | %s | %s | %s / %s | %s |", row.name, t.Count, t.Completed, t.SpanSeconds, t.PerSecond,
				msText(t.P50Ms), msText(t.MaxMs), msText(t.RunP50Ms), msText(t.RunP95Ms), counts(t.Queues))
		}
	}
	p.line("")
	p.line("Span: from the first heavy upsize sent to the last one's outcome.")
	p.line("")
}

func writeFairness(p *lineWriter, f *fairnessReport) {
	p.line("Every user sends %s. %d backlog user(s) send %d each at once; once those are queued, %d lone user(s) send one each; %d trial(s), with new users each.",
		jobText(f.Large), f.BacklogUsers, f.BacklogN, f.LoneUsers, len(f.Trials))
	if !f.KeepBacklog {
		p.line("Once the lone requests have their outcome, the backlog still open is canceled.")
	}
	p.line("")
	s := f.Summary
	p.line("The lane bound: a user's first %d large requests go to the first queue (weight %d), the rest to the \"more\" queue (weight %d). "+
		"A slot that frees draws the first queue over the more one with p = %d/%d = %.2f, so a lone request with a tasks ahead of it on the first queue "+
		"has a + NegBin(a+1, p) tasks started ahead of it: mean a + (a+1)(1-p)/p; the bound below is its %.0f %% quantile. "+
		"Whatever the timing a ≤ %d (every backlog user's first %d, and the other lone requests), so at most **%d tasks** are served ahead of a lone request (%.0f %%).",
		f.Lane, f.FirstWeight, f.MoreWeight, f.FirstWeight, f.FirstWeight+f.MoreWeight, f.DrawFirst, 100*f.BoundQuantile,
		s.DesignFirstAhead, f.Lane, s.DesignBoundAhead, 100*f.BoundQuantile)
	p.line("")
	p.line("| trial | lone request | outcome | latency | queue wait | running at admission | first-queue ahead (a) | served ahead (from more) | expected | bound | within | backlog done before it (while it waited) | expected latency | latency bound |")
	p.line("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
	for i, t := range f.Trials {
		for _, l := range t.Lone {
			within := "yes"
			if !l.WithinBound {
				within = "**no**"
			}
			p.line("| %d | %s | %s | %s | %s | %d | %d | %d (%d) | %.2f | %d | %s | %d (%d) | %s | %s |", i+1, l.RequestID, l.Outcome,
				msText(l.LatencyMs), msText(l.WaitMs), l.RunningAtAdmission, l.FirstAhead, l.ServedAhead, l.MoreAhead, l.ExpectedAhead,
				l.BoundAhead, within, l.BacklogDoneBefore, l.BacklogDoneWhile, msText(l.ExpectedLatencyMs), msText(l.BoundLatencyMs))
		}
	}
	p.line("")
	p.line("Latencies from the bound: what was running ends within one task, the tasks ahead share the slots seen running at once, then the request runs; expected with the trial's median task time, bound with its p95.")
	p.line("")
	p.line("| trial | backlog completed | slots seen | task p50 | task p95 |")
	p.line("| ---: | ---: | ---: | ---: | ---: |")
	for i, t := range f.Trials {
		p.line("| %d | %d | %d | %s | %s |", i+1, t.BacklogCompleted, t.Slots, msText(t.TaskP50Ms), msText(t.TaskP95Ms))
	}
	p.line("")
	p.line("Over the %d lone requests (%d completed): latency p50 %s, p95 %s, max %s (largest bound %s); served ahead mean %.2f (expected %.2f), max %d; within the bound: %d of %d; backlog requests completed before a lone one: median %d, max %d.",
		s.Lone, s.Completed, msText(s.LatencyP50Ms), msText(s.LatencyP95Ms), msText(s.LatencyMaxMs), msText(s.BoundLatencyMaxMs),
		s.ServedAheadMean, s.ExpectedAheadMean, s.ServedAheadMax, s.WithinBound, s.Lone, s.BacklogDoneBeforeP50, s.BacklogDoneBeforeMax)
	p.line("")
}

// scenarioLine is the one-line summary of a scenario.
func scenarioLine(s *scenarioReport) string {
	var b strings.Builder
	b.WriteString(s.Name + ":")
	if h := s.HeavyBurst; h != nil {
		if h.Idle != nil {
			fmt.Fprintf(&b, " small p95 idle %s;", msText(h.Idle.P95Ms))
		}
		if h.During != nil {
			fmt.Fprintf(&b, " during the burst %s (%d requests)", msText(h.During.P95Ms), h.During.Count)
			if h.SmallBoundMs != nil {
				fmt.Fprintf(&b, ", target ≤ %s %s", msText(*h.SmallBoundMs), map[bool]string{true: "met", false: "NOT met"}[*h.SmallTargetMet])
			}
			b.WriteString(";")
		}
		if h.Burst != nil {
			fmt.Fprintf(&b, " heavy %.3f/s with the stream;", h.Burst.PerSecond)
		}
		if h.HeavyOnly != nil {
			fmt.Fprintf(&b, " heavy %.3f/s alone;", h.HeavyOnly.PerSecond)
		}
	}
	if f := s.Fairness; f != nil {
		m := f.Summary
		fmt.Fprintf(&b, " %d lone requests, latency p50 %s, max %s (largest bound %s); served ahead mean %.2f (expected %.2f), max %d (bound whatever the timing %d); within the bound %d/%d; backlog completed before: median %d, max %d;",
			m.Lone, msText(m.LatencyP50Ms), msText(m.LatencyMaxMs), msText(m.BoundLatencyMaxMs), m.ServedAheadMean, m.ExpectedAheadMean,
			m.ServedAheadMax, m.DesignBoundAhead, m.WithinBound, m.Lone, m.BacklogDoneBeforeP50, m.BacklogDoneBeforeMax)
	}
	return strings.TrimSuffix(b.String(), ";")
}
