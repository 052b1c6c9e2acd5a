package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteReportFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "made", "by", "the", "writer")
	r := syntheticRun()
	rep := buildReport(r)
	if err := writeReport(filepath.Join(dir, "burst.json"), &rep, r); err != nil {
		t.Fatal(err)
	}

	var back report
	if err := json.Unmarshal(readFile(t, dir, "burst.json"), &back); err != nil {
		t.Fatal(err)
	}
	if back.Chart != "burst.svg" || back.Requests != 124 || len(back.Outcomes) != 4 || back.Outcomes[1].P95Ms != 19000 ||
		*back.Backlog.DrainSeconds != 2.5 || len(back.Backlog.Samples) != 6 || back.Cancels.Planned != 3 ||
		len(back.PerRequest) != 124 || back.PerRequest[0].Sent.After(back.PerRequest[123].Sent) {
		t.Fatalf("JSON report read back: %+v", back)
	}

	md := string(readFile(t, dir, "burst.md"))
	wantIn(t, md,
		"# Load test: burst of 124 against http://127.0.0.1:8080",
		"| requests sent | 124 |",
		"| error ratio | 3.2 % ",
		"| peak backlog | 12 tasks",
		"| drain time | 2.5 s from the last request sent",
		"| completed | 100 | 50.0 ms | 95.0 ms | 99.0 ms | 100.0 ms | none |",
		"| accepted_completed | 20 | 10.00 s | 19.00 s | 20.00 s | 20.00 s | none |",
		"| queue_full | 3 | 2.0 ms | 2.0 ms | 2.0 ms | 2.0 ms | busy ×1, queue_full ×2 |",
		"3 planned, 2 sent. Answers: 200 canceled ×1, 409 request_already_completed ×1, not sent ×1.",
		"Status codes: 201 ×1, 429 ×1.",
		"](burst.svg)",
	)

	svg := parseSVG(t, readFile(t, dir, "burst.svg"))
	for id, n := range map[string]int{"outcome-completed": 100, "outcome-accepted_completed": 20, "outcome-queue_full": 3, "outcome-transport_error": 1} {
		if svg.circles[id] != n {
			t.Errorf("%s has %d dots, want %d", id, svg.circles[id], n)
		}
	}
	if len(svg.circles) != 4 {
		t.Errorf("outcome groups %v, want only the four that happened", svg.circles)
	}
	if svg.backlogPoints != 6 {
		t.Errorf("backlog line has %d points, want one per sample (6)", svg.backlogPoints)
	}
}

func TestMarkdownNotDrained(t *testing.T) {
	r := syntheticRun()
	r.Samples = r.Samples[:3]
	rep := buildReport(r)
	var b bytes.Buffer
	if err := writeMarkdown(&b, &rep); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "| drain time | not seen to drain") || rep.Backlog.Drained {
		t.Fatalf("not drained:\n%s", b.String())
	}
}

// The chart of a run that sent nothing still has its axes and is valid XML.
func TestChartEmptyRun(t *testing.T) {
	var b bytes.Buffer
	if err := writeChart(&b, t0, nil, nil); err != nil {
		t.Fatal(err)
	}
	svg := parseSVG(t, b.Bytes())
	if len(svg.circles) != 0 || svg.backlogPoints != 0 || !svg.axes {
		t.Fatalf("empty chart: %+v", svg)
	}
}

func TestChartCoordinatesStayInPlot(t *testing.T) {
	r := syntheticRun()
	c := newChart(r.Started, r.Requests, r.Samples)
	for _, q := range r.Requests {
		if x, y := c.x(q.Sent.Add(q.Latency)), c.yLatency(q.Latency); x < plotL || x > plotR || y < plotT || y > plotB {
			t.Fatalf("request at (%v, %v) is off the plot", x, y)
		}
	}
	if c.latLo != 1 || c.latHi != 100000 || c.bMax != 15 || c.tMax != 25 {
		t.Fatalf("axes: latency %v..%v ms, backlog 0..%v, time 0..%v s", c.latLo, c.latHi, c.bMax, c.tMax)
	}
}

func readFile(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type svgSummary struct {
	circles       map[string]int // dots per outcome group id
	backlogPoints int
	axes          bool
}

// parseSVG reads the chart as XML (any syntax error fails the test) and counts its series.
func parseSVG(t *testing.T, b []byte) svgSummary {
	t.Helper()
	s := svgSummary{circles: map[string]int{}}
	dec := xml.NewDecoder(bytes.NewReader(b))
	var group string
	root := true
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not XML: %v\n%s", err, b)
		}
		el, ok := tok.(xml.StartElement)
		if !ok {
			if end, ok := tok.(xml.EndElement); ok && end.Name.Local == "g" {
				group = ""
			}
			continue
		}
		if root && (el.Name.Local != "svg" || el.Name.Space != "http://www.w3.org/2000/svg") {
			t.Fatalf("root element %v", el.Name)
		}
		root = false
		id := attr(el, "id")
		switch {
		case el.Name.Local == "g" && strings.HasPrefix(id, "outcome-"):
			group = id
			s.circles[id] += 0
		case el.Name.Local == "g" && id == "axes":
			s.axes = true
		case el.Name.Local == "circle" && group != "":
			s.circles[group]++
		case el.Name.Local == "polyline" && id == "backlog":
			s.backlogPoints = len(strings.Fields(attr(el, "points")))
		}
	}
	return s
}

func attr(el xml.StartElement, name string) string {
	for _, a := range el.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// wantIn checks that the report's text holds each of wants.
func wantIn(t *testing.T, text string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(text, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, text)
		}
	}
}
