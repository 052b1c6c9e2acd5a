package promcheck

import (
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// The dashboard is a Grafana JSON model that imports into any Grafana with a Prometheus datasource:
// every panel has queries, and every datasource reference is the ${datasource} variable, never the
// uid of one installation's datasource.
func TestDashboardStructure(t *testing.T) {
	d, raw := loadDashboard(t)
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want at least 36 (datasource references by uid)", d.SchemaVersion)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both are needed for a stable URL and provisioning", d.UID, d.Title)
	}
	var dsVars int
	for _, v := range d.Templating.List {
		if v.Type == "datasource" {
			dsVars++
			if v.Name != "datasource" || varQuery(v) != "prometheus" {
				t.Errorf("datasource variable %q with query %q: want name datasource, query prometheus", v.Name, varQuery(v))
			}
		}
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID != dsVar) {
			t.Errorf("variable %s: datasource %+v, want uid %s", v.Name, v.Datasource, dsVar)
		}
	}
	if dsVars != 1 {
		t.Errorf("%d datasource variables, want 1", dsVars)
	}

	ids := map[int]string{}
	var withTargets int
	for _, p := range allPanels(d.Panels) {
		if prev, dup := ids[p.ID]; dup || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or already used by %q", p.Title, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v is not a place on the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Title == "" {
			t.Errorf("panel %d has no title", p.ID)
		}
		if p.Datasource == nil || p.Datasource.UID != dsVar || p.Datasource.Type != "prometheus" {
			t.Errorf("panel %q: datasource %+v, want {prometheus %s}", p.Title, p.Datasource, dsVar)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no targets", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: target %q has no expression or a missing or repeated refId", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource != nil && tg.Datasource.UID != dsVar {
				t.Errorf("panel %q target %s: datasource uid %q, want %s", p.Title, tg.RefID, tg.Datasource.UID, dsVar)
			}
		}
		withTargets++
	}
	if withTargets < 10 {
		t.Errorf("only %d panels with queries", withTargets)
	}

	// Anywhere in the model (annotations, variables, panels, library panels), a datasource is the
	// variable or Grafana's own built-in annotation source; an exported dashboard's ${DS_...} inputs
	// or a hard-coded uid would break the import elsewhere.
	walkJSON(raw, "", func(path string, key string, v any) {
		if key != "datasource" {
			return
		}
		switch ds := v.(type) {
		case string:
			if ds != dsVar && ds != "$datasource" {
				t.Errorf("%s: datasource %q", path, ds)
			}
		case map[string]any:
			uid, _ := ds["uid"].(string)
			if uid != dsVar && !(ds["type"] == "grafana" && uid == "-- Grafana --") {
				t.Errorf("%s: datasource %v: want uid %s", path, ds, dsVar)
			}
		case nil:
		default:
			t.Errorf("%s: datasource %v", path, v)
		}
	})
	if m, ok := raw.(map[string]any); ok {
		if _, ok := m["__inputs"]; ok {
			t.Errorf("__inputs: an export for sharing; commit the dashboard with the ${datasource} variable instead")
		}
	}
}

func walkJSON(v any, path string, f func(path, key string, v any)) {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range sortedKeys(x) {
			f(path+"."+k, k, x[k])
			walkJSON(x[k], path+"."+k, f)
		}
	case []any:
		for i, e := range x {
			walkJSON(e, fmt.Sprintf("%s[%d]", path, i), f)
		}
	}
}

// Every expression of the dashboard and of the rule parses with Prometheus's parser, once Grafana's
// variables are replaced; a variable the dashboard does not define is an error. Alerts and panels must
// yield an instant vector (or a scalar, for a panel).
func TestExpressionsParse(t *testing.T) {
	d, r, ps := everything(t)
	if len(ps) < len(dashboardQueries(t, d))+len(ruleQueries(r)) || len(ps) < 20 {
		t.Fatalf("only %d expressions", len(ps))
	}
	for _, p := range ps {
		typ := p.ast.Type()
		switch {
		case p.alert != nil && typ != parser.ValueTypeVector:
			t.Errorf("%s: an alert needs an instant vector, this is a %s", p.where, typ)
		case typ != parser.ValueTypeVector && typ != parser.ValueTypeScalar:
			t.Errorf("%s: yields a %s, which a panel cannot draw", p.where, typ)
		}
		for _, s := range selectors(p.ast) {
			if s.name == "" {
				t.Errorf("%s: a selector without a metric name: %s", p.where, p.text)
			}
		}
	}
}

// In a shared Prometheus, a selector without job= picks every target's series (every pod's
// go_goroutines); each must name the service's jobs.
func TestSelectorsNameTheJob(t *testing.T) {
	_, _, ps := everything(t)
	for _, p := range ps {
		for _, s := range selectors(p.ast) {
			var job bool
			for _, m := range s.matchers {
				if m.Name != "job" {
					continue
				}
				job = true
				if m.Type == labels.MatchNotEqual || m.Type == labels.MatchNotRegexp || !(m.Matches(jobAPI) || m.Matches(jobWorker)) {
					t.Errorf("%s: %s{%s} matches neither %s nor %s", p.where, s.name, m, jobAPI, jobWorker)
				}
				for _, other := range []string{"", "kubelet", "node-exporter", "upsize-worker-metrics"} {
					if m.Matches(other) {
						t.Errorf("%s: %s{%s} also matches job %q", p.where, s.name, m, other)
					}
				}
			}
			if !job {
				t.Errorf("%s: %s has no job matcher", p.where, s.name)
			}
		}
	}
}

const serviceMonitorsPath = "../k8s/base/servicemonitors.yaml"

// Every query names job="upsize-api" or job="upsize-worker". The Prometheus Operator would name a job
// after the Service (the workers' is upsize-worker-metrics), so the ServiceMonitors must set exactly
// these two jobs explicitly.
func TestServiceMonitorsProduceTheJobs(t *testing.T) {
	b, err := os.ReadFile(serviceMonitorsPath)
	if err != nil {
		t.Fatal(err)
	}
	jobs := map[string]bool{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var sm monitoringv1.ServiceMonitor
		if err := yaml.UnmarshalStrict([]byte(doc), &sm); err != nil {
			t.Fatalf("%s: %v", serviceMonitorsPath, err)
		}
		if sm.Kind != "ServiceMonitor" {
			continue
		}
		for i, ep := range sm.Spec.Endpoints {
			var job string
			for _, rc := range ep.RelabelConfigs {
				// A replace without source labels writes its replacement; later relabelings win.
				if rc.TargetLabel == "job" && (rc.Action == "" || strings.EqualFold(rc.Action, "replace")) &&
					len(rc.SourceLabels) == 0 && rc.Replacement != nil {
					job = *rc.Replacement
				}
			}
			if job == "" {
				t.Errorf("ServiceMonitor %s endpoint %d: no relabeling sets job, so it would be the Service's name", sm.Name, i)
			}
			jobs[job] = true
		}
	}
	if len(jobs) != 2 || !jobs[jobAPI] || !jobs[jobWorker] {
		t.Errorf("the ServiceMonitors produce jobs %v, the dashboard and alerts query %s and %s", sortedKeys(jobs), jobAPI, jobWorker)
	}
}

var severities = map[string]bool{"critical": true, "warning": true, "info": true}

// The PrometheusRule decodes strictly into prometheus-operator's type, has the name and the selector
// label documented, and every alert has a severity, a summary, a description and a runbook section
// that exists. Prometheus's own rule-file validation (rulefmt: expressions, durations, label names,
// annotation templates) accepts the groups the operator will write out.
func TestPrometheusRule(t *testing.T) {
	r := loadRule(t)
	if r.APIVersion != "monitoring.coreos.com/v1" || r.Kind != "PrometheusRule" {
		t.Errorf("apiVersion %q kind %q", r.APIVersion, r.Kind)
	}
	if r.Name != "upsize" || r.Labels["release"] == "" {
		t.Errorf("metadata.name %q, labels %v: want name upsize and a release label for the ruleSelector", r.Name, r.Labels)
	}
	if r.Namespace != "" {
		t.Errorf("metadata.namespace %q: the kustomization sets it", r.Namespace)
	}
	docs, err := os.ReadFile(docsPath)
	if err != nil {
		t.Fatal(err)
	}
	anchors := markdownAnchors(string(docs))

	names := map[string]bool{}
	var alerts int
	for _, g := range r.Spec.Groups {
		for _, rl := range g.Rules {
			if rl.Alert == "" {
				t.Errorf("group %s: a rule that is not an alert (%q); recording rules are not expected here", g.Name, rl.Record)
				continue
			}
			alerts++
			if names[rl.Alert] {
				t.Errorf("alert %s defined twice", rl.Alert)
			}
			names[rl.Alert] = true
			if rl.For == nil {
				t.Errorf("alert %s: no for: it would fire on one evaluation", rl.Alert)
			} else if _, err := model.ParseDuration(string(*rl.For)); err != nil {
				t.Errorf("alert %s: for %q: %v", rl.Alert, *rl.For, err)
			}
			if !severities[rl.Labels["severity"]] {
				t.Errorf("alert %s: severity %q, want one of critical, warning, info", rl.Alert, rl.Labels["severity"])
			}
			for _, a := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(rl.Annotations[a]) == "" {
					t.Errorf("alert %s: no %s annotation", rl.Alert, a)
				}
			}
			want := "docs/observability.md#" + strings.ToLower(rl.Alert)
			if rb := rl.Annotations["runbook"]; rb != want {
				t.Errorf("alert %s: runbook %q, want %q", rl.Alert, rb, want)
			}
			if !anchors[strings.ToLower(rl.Alert)] {
				t.Errorf("alert %s: docs/observability.md has no heading %q (the runbook)", rl.Alert, rl.Alert)
			}
		}
	}
	if alerts < 8 {
		t.Errorf("only %d alerts", alerts)
	}

	// What the operator writes to Prometheus's rule file is the spec's groups, as YAML.
	b, err := yaml.Marshal(r.Spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, errs := rulefmt.Parse(b, false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler)); len(errs) > 0 {
		for _, e := range errs {
			t.Errorf("rulefmt: %v", e)
		}
	}
}

var headingRe = regexp.MustCompile(`(?m)^#{1,6}\s+(.+?)\s*$`)

// markdownAnchors are the anchors GitHub gives the headings of a markdown text.
func markdownAnchors(md string) map[string]bool {
	out := map[string]bool{}
	for _, m := range headingRe.FindAllStringSubmatch(md, -1) {
		h := strings.ToLower(strings.ReplaceAll(m[1], "`", ""))
		var b strings.Builder
		for _, r := range h {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
				b.WriteRune(r)
			}
		}
		out[b.String()] = true
	}
	return out
}
