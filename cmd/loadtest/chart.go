package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// The chart's frame: the plot area, then the legend under it.
const (
	chartW, chartH             = 960, 540
	plotL, plotR, plotT, plotB = 80.0, 880.0, 40.0, 420.0
)

var outcomeColors = map[outcome]string{
	completed: "#2e7d32", acceptedCompleted: "#81c784", canceled: "#1565c0", acceptedCanceled: "#64b5f6",
	queueFull: "#ef6c00", noCredit: "#8d6e63", rejected: "#ab47bc", acceptedFailed: "#e53935",
	serverError: "#b71c1c", transportError: "#212121", unexpected: "#f06292", acceptedUnresolved: "#9e9e9e",
	interrupted: "#cfd8dc",
}

// chart maps a run onto the plot: time on x, latency (logarithmic) on the left axis, backlog on the right.
type chart struct {
	start        time.Time
	tMax, tStep  float64 // seconds
	latLo, latHi float64 // milliseconds, whole decades
	bMax, bStep  float64 // tasks
}

func newChart(start time.Time, reqs []request, samples []sample) chart {
	c := chart{start: start, latLo: math.Inf(1), latHi: 0}
	for _, r := range reqs {
		c.tMax = max(c.tMax, r.Sent.Add(r.Latency).Sub(start).Seconds())
		v := max(ms(r.Latency), 0.01)
		c.latLo, c.latHi = min(c.latLo, v), max(c.latHi, v)
	}
	for _, s := range samples {
		c.tMax = max(c.tMax, s.At.Sub(start).Seconds())
		c.bMax = max(c.bMax, float64(s.Backlog))
	}
	if len(reqs) == 0 {
		c.latLo, c.latHi = 1, 1000
	}
	c.latLo = math.Pow(10, math.Floor(math.Log10(c.latLo)))
	c.latHi = max(math.Pow(10, math.Ceil(math.Log10(c.latHi))), c.latLo*10)
	c.tStep = niceStep(max(c.tMax, 1) / 5)
	c.tMax = c.tStep * math.Ceil(max(c.tMax, 1)/c.tStep)
	c.bStep = niceStep(max(c.bMax, 1) / 5)
	c.bMax = c.bStep * math.Ceil(max(c.bMax, 1)/c.bStep)
	return c
}

// niceStep is the smallest of 1, 2, 5 times a power of ten that is at least v.
func niceStep(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func (c chart) x(t time.Time) float64 {
	return plotL + (plotR-plotL)*max(t.Sub(c.start).Seconds(), 0)/c.tMax
}

func (c chart) yLatency(d time.Duration) float64 {
	v := max(ms(d), c.latLo)
	return plotB - (plotB-plotT)*math.Log10(v/c.latLo)/math.Log10(c.latHi/c.latLo)
}

func (c chart) yBacklog(n int64) float64 {
	return plotB - (plotB-plotT)*float64(n)/c.bMax
}

// writeChart draws each request's latency as a dot at the moment its outcome came (a burst's dots would
// all sit at 0 if placed at their sending), one group per outcome (id "outcome-<name>"), and the backlog
// as a line (id "backlog") on a second axis.
func writeChart(w io.Writer, start time.Time, reqs []request, samples []sample) error {
	c := newChart(start, reqs, samples)
	p := &lineWriter{w: w}
	p.line(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`, chartW, chartH, chartW, chartH)
	p.line(`<title>Latency of each upsize by outcome, and the queue backlog, over time</title>`)
	p.line(`<rect width="%d" height="%d" fill="white"/>`, chartW, chartH)
	c.axes(p)
	byOutcome := map[outcome][]request{}
	for _, r := range reqs {
		byOutcome[r.Outcome] = append(byOutcome[r.Outcome], r)
	}
	var legend []legendEntry
	for _, o := range outcomes {
		if len(byOutcome[o]) == 0 {
			continue
		}
		p.line(`<g id="outcome-%s" class="outcome" fill="%s" fill-opacity="0.8">`, o, outcomeColors[o])
		for _, r := range byOutcome[o] {
			p.line(`<circle cx="%.1f" cy="%.1f" r="2.5"/>`, c.x(r.Sent.Add(r.Latency)), c.yLatency(r.Latency))
		}
		p.line(`</g>`)
		legend = append(legend, legendEntry{fmt.Sprintf("%s (%d)", o, len(byOutcome[o])), outcomeColors[o], false})
	}
	if len(samples) > 0 {
		pts := make([]string, len(samples))
		for i, s := range samples {
			pts[i] = fmt.Sprintf("%.1f,%.1f", c.x(s.At), c.yBacklog(s.Backlog))
		}
		p.line(`<polyline id="backlog" fill="none" stroke="#37474f" stroke-width="1.5" points="%s"/>`, strings.Join(pts, " "))
		legend = append(legend, legendEntry{"backlog (right axis)", "#37474f", true})
	}
	writeLegend(p, legend)
	p.line(`</svg>`)
	return p.err
}

func (c chart) axes(p *lineWriter) {
	p.line(`<g id="axes" stroke="#90a4ae" fill="#37474f">`)
	p.line(`<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none"/>`, plotL, plotT, plotR-plotL, plotB-plotT)
	for i := 0.0; i*c.tStep <= c.tMax*1.001; i++ {
		x := plotL + (plotR-plotL)*i*c.tStep/c.tMax
		p.line(`<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f"/><text x="%.1f" y="%.0f" stroke="none" text-anchor="middle">%.4g</text>`, x, plotB, x, plotB+5, x, plotB+18, i*c.tStep)
	}
	for v := c.latLo; v <= c.latHi*1.001; v *= 10 {
		y := c.yLatency(time.Duration(v * float64(time.Millisecond)))
		p.line(`<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f"/><text x="%.0f" y="%.1f" stroke="none" text-anchor="end">%s</text>`, plotL-5, y, plotL, y, plotL-8, y+4, latencyLabel(v))
	}
	for i := 0.0; i*c.bStep <= c.bMax*1.001; i++ {
		y := plotB - (plotB-plotT)*i*c.bStep/c.bMax
		p.line(`<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f"/><text x="%.0f" y="%.1f" stroke="none">%.4g</text>`, plotR, y, plotR+5, y, plotR+8, y+4, i*c.bStep)
	}
	p.line(`<text x="%.0f" y="%.0f" stroke="none" text-anchor="middle">time since the attack began (s)</text>`, (plotL+plotR)/2, plotB+36)
	p.line(`<text x="%.0f" y="%.0f" stroke="none">latency</text>`, plotL-60, plotT-14)
	p.line(`<text x="%.0f" y="%.0f" stroke="none" text-anchor="end">backlog (tasks)</text>`, plotR+60, plotT-14)
	p.line(`</g>`)
}

func latencyLabel(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%g s", v/1000)
	}
	return fmt.Sprintf("%g ms", v)
}

type legendEntry struct {
	label, color string
	line         bool
}

// writeLegend lays the entries out in rows under the plot.
func writeLegend(p *lineWriter, entries []legendEntry) {
	p.line(`<g id="legend">`)
	const colW, top = 200.0, plotB + 62
	perRow := int((plotR - plotL) / colW)
	for i, e := range entries {
		x, y := plotL+colW*float64(i%perRow), top+20*float64(i/perRow)
		if e.line {
			p.line(`<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="1.5"/>`, x-6, y, x+6, y, e.color)
		} else {
			p.line(`<circle cx="%.0f" cy="%.0f" r="4" fill="%s"/>`, x, y, e.color)
		}
		p.line(`<text x="%.0f" y="%.0f">%s</text>`, x+12, y+4, e.label)
	}
	p.line(`</g>`)
}
