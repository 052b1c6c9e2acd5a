package promcheck

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

const (
	dashboardPath = "../grafana/upsize.json"
	rulePath      = "../k8s/base/prometheusrule.yaml"
	scalerPath    = "../k8s/base/worker-scaledobject.yaml"
	docsPath      = "../../docs/observability.md"

	// The ServiceMonitors' job labels (docs/observability.md).
	jobAPI    = "upsize-api"
	jobWorker = "upsize-worker"
)

// Labels Prometheus and the ServiceMonitors attach to every scraped series; the service never
// exposes them itself.
var targetLabels = map[string]bool{
	"job": true, "instance": true, "namespace": true, "pod": true, "service": true, "container": true, "endpoint": true,
}

// Prometheus's default parser: no experimental functions, as a Prometheus without feature flags runs.
var promParser = parser.NewParser(parser.Options{})

// query is one PromQL expression and where it comes from.
type query struct {
	where  string // for messages: "panel \"Upsize latency\" target B", "alert UpsizeNoWorker"
	expr   string // as written, Grafana variables included
	legend string // a panel target's legendFormat
	alert  *monitoringv1.Rule
	scaler bool // the KEDA trigger's query: one series, the work backlog
}

// ---- dashboard ----

type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type target struct {
	RefID        string `json:"refId"`
	Expr         string `json:"expr"`
	LegendFormat string `json:"legendFormat"`
	Datasource   *dsRef `json:"datasource"`
}

type panel struct {
	ID         int      `json:"id"`
	Type       string   `json:"type"`
	Title      string   `json:"title"`
	Datasource *dsRef   `json:"datasource"`
	Targets    []target `json:"targets"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

type variable struct {
	Type       string          `json:"type"`
	Name       string          `json:"name"`
	Query      json.RawMessage `json:"query"`
	Datasource *dsRef          `json:"datasource"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
}

type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Panels        []panel
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

// The datasource every panel, target and query variable must use: the template variable.
const dsVar = "${datasource}"

func loadDashboard(t *testing.T) (*dashboard, any) {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var raw any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return &d, raw
}

// allPanels flattens rows, collapsed ones included.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// varQuery is the text of a query variable: a string, or {"query": "..."} in newer Grafana.
func varQuery(v variable) string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	_ = json.Unmarshal(v.Query, &o)
	return o.Query
}

// Grafana's Prometheus variable functions; the PromQL inside them is checked like any other.
var (
	labelValuesRe = regexp.MustCompile(`^\s*label_values\(\s*(.*?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)
	queryResultRe = regexp.MustCompile(`^\s*query_result\(\s*(.*)\s*\)\s*$`)
)

func dashboardQueries(t *testing.T, d *dashboard) []query {
	t.Helper()
	var qs []query
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			qs = append(qs, query{where: fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), expr: tg.Expr, legend: tg.LegendFormat})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q := varQuery(v)
		if m := labelValuesRe.FindStringSubmatch(q); m != nil {
			qs = append(qs, query{where: "variable " + v.Name, expr: m[1]})
		} else if m := queryResultRe.FindStringSubmatch(q); m != nil {
			qs = append(qs, query{where: "variable " + v.Name, expr: m[1]})
		} else {
			t.Errorf("variable %s: query %q is neither label_values(<selector>, <label>) nor query_result(<expr>)", v.Name, q)
		}
	}
	return qs
}

// ---- Grafana variables ----

var varRe = regexp.MustCompile(`\$(?:\{([A-Za-z0-9_]+)(?::[A-Za-z]+)?\}|([A-Za-z0-9_]+))`)

// Grafana's built-in variables that may appear in a query, with values valid where they may appear.
// $__rate_interval is 4 scrape intervals of 15 s, which the samples of the real run are spaced by.
var builtinVars = map[string]string{
	"__rate_interval": "1m",
	"__interval":      "15s",
	"__interval_ms":   "15000",
	"__range":         "1h",
	"__range_s":       "3600",
	"__range_ms":      "3600000",
}

// substitutions maps every variable a query may use to a value that keeps PromQL valid: built-ins as
// above, multi-value query variables to their "All" value (a regex; they appear only in =~ matchers),
// textboxes and custom variables to their default.
func substitutions(t *testing.T, d *dashboard) map[string]string {
	t.Helper()
	subs := map[string]string{}
	for k, v := range builtinVars {
		subs[k] = v
	}
	for _, v := range d.Templating.List {
		switch v.Type {
		case "query":
			if !v.IncludeAll || v.AllValue == "" {
				t.Errorf("variable %s: set includeAll and allValue (\".*\"): panels match it with =~", v.Name)
			}
			subs[v.Name] = v.AllValue
		case "textbox", "custom", "constant":
			var s string
			if json.Unmarshal(v.Query, &s) != nil || s == "" {
				t.Errorf("variable %s: no default value in query", v.Name)
			}
			subs[v.Name] = strings.TrimSpace(strings.Split(s, ",")[0])
		case "datasource":
			subs[v.Name] = "placeholder" // never inside PromQL; a datasource in an expression is a mistake caught by the parser
		}
	}
	return subs
}

// expand replaces Grafana variables; an unknown one is an error.
func expand(expr string, subs map[string]string) (string, error) {
	var unknown []string
	out := varRe.ReplaceAllStringFunc(expr, func(m string) string {
		sm := varRe.FindStringSubmatch(m)
		name := sm[1] + sm[2]
		v, ok := subs[name]
		if !ok {
			unknown = append(unknown, m)
			return m
		}
		return v
	})
	if len(unknown) > 0 {
		return "", fmt.Errorf("undefined variable(s) %v", unknown)
	}
	return out, nil
}

// ---- PrometheusRule ----

func loadRule(t *testing.T) *monitoringv1.PrometheusRule {
	t.Helper()
	b, err := os.ReadFile(rulePath)
	if err != nil {
		t.Fatal(err)
	}
	var r monitoringv1.PrometheusRule
	// Strict: a misspelt field (annotation vs annotations, for in the wrong place) is an error, not
	// silently dropped as the API server would on apply.
	if err := yaml.UnmarshalStrict(b, &r); err != nil {
		t.Fatalf("%s: %v", rulePath, err)
	}
	return &r
}

func ruleQueries(r *monitoringv1.PrometheusRule) []query {
	var qs []query
	for gi := range r.Spec.Groups {
		for ri := range r.Spec.Groups[gi].Rules {
			rl := &r.Spec.Groups[gi].Rules[ri]
			name := "alert " + rl.Alert
			if rl.Record != "" {
				name = "record " + rl.Record
			}
			qs = append(qs, query{where: name, expr: rl.Expr.String(), alert: rl})
		}
	}
	return qs
}

// ---- ScaledObject ----

// scaledObject is what these checks read of KEDA's ScaledObject (deploy/check decodes it strictly into
// KEDA's own type).
type scaledObject struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Triggers []struct {
			Type     string            `json:"type"`
			Name     string            `json:"name"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

func loadScaledObject(t *testing.T) *scaledObject {
	t.Helper()
	b, err := os.ReadFile(scalerPath)
	if err != nil {
		t.Fatal(err)
	}
	var so scaledObject
	if err := yaml.Unmarshal(b, &so); err != nil {
		t.Fatalf("%s: %v", scalerPath, err)
	}
	return &so
}

// scalerQueries are the queries of the ScaledObject's prometheus triggers, checked like the panels'.
func scalerQueries(so *scaledObject) []query {
	var qs []query
	for _, tr := range so.Spec.Triggers {
		if tr.Type == "prometheus" {
			qs = append(qs, query{where: fmt.Sprintf("ScaledObject %s trigger %s", so.Metadata.Name, tr.Name), expr: tr.Metadata["query"], scaler: true})
		}
	}
	return qs
}

// ---- PromQL ----

// selector is one vector selector of an expression: its metric name and matchers.
type selector struct {
	name     string
	matchers []*labels.Matcher
}

// selectors walks the AST: every VectorSelector (those inside matrix selectors and subqueries
// included), its name from the selector or from a __name__ matcher.
func selectors(e parser.Expr) []selector {
	var out []selector
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		s := selector{name: vs.Name}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName {
				if m.Type == labels.MatchEqual {
					s.name = m.Value
				}
				continue
			}
			s.matchers = append(s.matchers, m)
		}
		out = append(out, s)
		return nil
	})
	return out
}

type parsed struct {
	query
	text string // variables expanded
	ast  parser.Expr
}

// parseAll parses every query after expanding variables, failing the test on any error.
func parseAll(t *testing.T, qs []query, subs map[string]string) []parsed {
	t.Helper()
	var out []parsed
	for _, q := range qs {
		text, err := expand(q.expr, subs)
		if err != nil {
			t.Errorf("%s: %v\n%s", q.where, err, q.expr)
			continue
		}
		ast, err := promParser.ParseExpr(text)
		if err != nil {
			t.Errorf("%s: %v\n%s", q.where, err, text)
			continue
		}
		out = append(out, parsed{query: q, text: text, ast: ast})
	}
	return out
}

// everything loads the dashboard, the rule and the ScaledObject, and parses all their expressions.
func everything(t *testing.T) (*dashboard, *monitoringv1.PrometheusRule, []parsed) {
	t.Helper()
	d, _ := loadDashboard(t)
	r := loadRule(t)
	qs := append(dashboardQueries(t, d), ruleQueries(r)...)
	qs = append(qs, scalerQueries(loadScaledObject(t))...)
	ps := parseAll(t, qs, substitutions(t, d))
	if len(ps) < len(qs) {
		t.FailNow()
	}
	return d, r, ps
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
