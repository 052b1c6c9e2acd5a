package check

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/redis/go-redis/v9"
	autoscalingv2 "k8s.io/api/autoscaling/v2"

	"upsize/internal/metrics"
	"upsize/internal/policy"
)

// Trigger metadata KEDA's prometheus scaler reads (prometheusMetadata in KEDA v2.21
// pkg/scalers/prometheus_scaler.go, and authModes of pkg/scalers/authentication). KEDA ignores unknown
// keys, so a misspelt one (ignoreNullValue) would silently fall back to its default.
var prometheusTriggerMetadata = []string{"serverAddress", "query", "queryParameters", "threshold", "activationThreshold",
	"namespace", "customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner", "authModes"}

// fallbackBehaviors that never scale a busy fleet down because the backlog cannot be read.
var fallbackBehaviors = []string{kedav1alpha1.FallbackBehaviorCurrentReplicasIfHigher, kedav1alpha1.FallbackBehaviorCurrentReplicas}

// promParser is Prometheus's own parser with no experimental functions, as a Prometheus without feature
// flags runs (deploy/promcheck uses the same).
var promParser = parser.NewParser(parser.Options{})

// metricCatalogue is every family internal/metrics defines, with the role that exports it, and the
// API's families that every API replica exports with the same value (read from Redis at scrape time by
// the backlog collector: the ones it describes beside upsize_queue_tasks, but upsize_redis_up, which is
// each process's own). Read from the collectors' descriptions: nothing is served or connected.
type catalogue struct {
	roles  map[string][]string // family -> the roles exporting it: "api", "worker" or both
	global map[string]bool
}

var metricCatalogue = sync.OnceValue(func() catalogue {
	c := catalogue{roles: map[string][]string{}, global: map[string]bool{}}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled: Describe reads no Redis
	defer rdb.Close()
	for _, role := range []string{"api", "worker"} {
		reg := &recorder{}
		if role == "api" {
			metrics.NewAPI(reg, rdb, metrics.Backlog{})
		} else {
			metrics.NewWorker(reg, rdb, 1)
		}
		for _, col := range reg.collectors {
			names := describedNames(col)
			for _, n := range names {
				if !slices.Contains(c.roles[n], role) {
					c.roles[n] = append(c.roles[n], role)
				}
			}
			if slices.Contains(names, "upsize_queue_tasks") {
				for _, n := range names {
					c.global[n] = n != "upsize_redis_up"
				}
			}
		}
	}
	return c
})

// recorder is a prometheus.Registerer that keeps what is registered.
type recorder struct{ collectors []prom.Collector }

func (r *recorder) Register(c prom.Collector) error {
	r.collectors = append(r.collectors, c)
	return nil
}
func (r *recorder) MustRegister(cs ...prom.Collector) {
	r.collectors = append(r.collectors, cs...)
}
func (r *recorder) Unregister(prom.Collector) bool { return false }

var fqNameRe = regexp.MustCompile(`fqName: "([^"]+)"`)

func describedNames(col prom.Collector) []string {
	ch := make(chan *prom.Desc, 64)
	go func() { col.Describe(ch); close(ch) }()
	var out []string
	for d := range ch {
		if m := fqNameRe.FindStringSubmatch(d.String()); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// family maps a series name to its family: itself, or a histogram's _bucket, _sum and _count.
func (c catalogue) family(name string) (string, bool) {
	if _, ok := c.roles[name]; ok {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if _, ok := c.roles[base]; ok {
				return base, true
			}
		}
	}
	return "", false
}

func checkScaledObjects(r *rendered) []error {
	var errs []error
	if len(r.scaledObjects) != 1 {
		return []error{fmt.Errorf("%d ScaledObjects, want one for the workers", len(r.scaledObjects))}
	}
	so := r.scaledObjects[0]
	fail := func(f string, a ...any) { errs = append(errs, fmt.Errorf("ScaledObject "+so.Name+": "+f, a...)) }

	// KEDA's own admission checks.
	if err := kedav1alpha1.ValidateTriggers(so.Spec.Triggers); err != nil {
		fail("%v", err)
	}
	if err := kedav1alpha1.CheckReplicaCountBoundsAreValid(so); err != nil {
		fail("%v", err)
	}
	if err := kedav1alpha1.CheckFallbackValid(so); err != nil {
		fail("%v", err)
	}
	// asynq's retry forwarder and crash recoverer run inside workers: zero workers would strand retries.
	if so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount < 1 {
		fail("minReplicaCount must be at least 1")
	}
	if so.Spec.IdleReplicaCount != nil {
		fail("idleReplicaCount would scale workers to zero")
	}
	maxReplicas := int32(100) // KEDA's default
	if so.Spec.MaxReplicaCount != nil {
		maxReplicas = *so.Spec.MaxReplicaCount
	}

	workers := r.byRole("worker")
	if len(workers) != 1 || so.Spec.ScaleTargetRef == nil || workers[0].w.name != so.Spec.ScaleTargetRef.Name {
		fail("does not target the worker Deployment")
	}

	// Prometheus unreadable or the query empty: without a fallback the HPA keeps its last decision with
	// no metric, and a replica count the operator chose is better; one that never shrinks a busy fleet.
	switch fb := so.Spec.Fallback; {
	case fb == nil:
		fail("no fallback: with Prometheus unreadable the workers' count would follow no figure")
	default:
		if fb.FailureThreshold < 1 {
			fail("fallback failureThreshold %d: one failed poll should not be enough", fb.FailureThreshold)
		}
		if so.Spec.MinReplicaCount != nil && fb.Replicas < *so.Spec.MinReplicaCount || fb.Replicas > maxReplicas {
			fail("fallback replicas %d outside minReplicaCount..maxReplicaCount", fb.Replicas)
		}
		if !slices.Contains(fallbackBehaviors, fb.Behavior) {
			fail("fallback behavior %q could scale a busy fleet down while the backlog cannot be read; want one of %v", fb.Behavior, fallbackBehaviors)
		}
	}
	if adv := so.Spec.Advanced; adv != nil && adv.ScalingModifiers.Formula != "" {
		fail("scalingModifiers: the work backlog is one query, its threshold the target; a formula would replace it")
	}

	// One Prometheus trigger: the work backlog.
	if len(so.Spec.Triggers) != 1 || so.Spec.Triggers[0].Type != "prometheus" {
		var types []string
		for _, tr := range so.Spec.Triggers {
			types = append(types, tr.Type)
		}
		fail("triggers %v, want one prometheus trigger on the work backlog", types)
		return errs
	}
	tr := so.Spec.Triggers[0]
	failT := func(f string, a ...any) { fail("trigger "+tr.Name+": "+f, a...) }
	for k := range tr.Metadata {
		if !slices.Contains(prometheusTriggerMetadata, k) {
			failT("metadata %s is not a setting of KEDA's prometheus scaler", k)
		}
	}
	if tr.MetricType != "" && tr.MetricType != autoscalingv2.AverageValueMetricType {
		failT("metricType %q: the backlog is shared among workers, want AverageValue", tr.MetricType)
	}
	// KEDA's default (true) reads an empty result as 0: no API scraped, or Redis down, would scale the
	// workers to one while tasks wait, and the fallback would never apply.
	if v, err := strconv.ParseBool(tr.Metadata["ignoreNullValues"]); err != nil || v {
		failT("ignoreNullValues %q: an empty result must be an error (the fallback), not a backlog of 0; want \"false\"", tr.Metadata["ignoreNullValues"])
	}
	errs = append(errs, prefixed("ScaledObject "+so.Name+" trigger "+tr.Name, r.checkServerAddress(tr.Metadata["serverAddress"]))...)
	errs = append(errs, prefixed("ScaledObject "+so.Name+" trigger "+tr.Name, checkScalerQuery(tr.Metadata["query"], so.Namespace))...)

	// The threshold, in estimated work-seconds per worker, between what a worker's own slots hold and
	// what would keep a request past its wait deadline.
	threshold, err := strconv.ParseFloat(tr.Metadata["threshold"], 64)
	if err != nil || threshold <= 0 {
		failT("threshold %q is not a positive number of work-seconds", tr.Metadata["threshold"])
		return errs
	}
	for _, w := range workers {
		slots := float64(w.cfg.WorkerConcurrency)
		largest := policy.DefaultWork.Estimate("", w.cfg.MaxOutputPixels) // unknown format: the dearest
		if threshold < slots*largest.Seconds() {
			failT("threshold %gs of work per worker is below what its %d slots hold running the largest task (%s each): a busy worker with nothing queued would start another",
				threshold, w.cfg.WorkerConcurrency, largest.Round(time.Millisecond))
		}
		for _, api := range r.byRole("api") {
			if drain := time.Duration(threshold / slots * float64(time.Second)); drain > api.cfg.UpsizeWaitTimeout {
				failT("threshold %gs of work per worker drains in %s on %d slots, longer than UPSIZE_WAIT_TIMEOUT %s: at the target, requests would answer 202",
					threshold, drain, w.cfg.WorkerConcurrency, api.cfg.UpsizeWaitTimeout)
			}
		}
	}

	// Authentication (a managed Prometheus may need one): every reference resolves, and no
	// TriggerAuthentication is left over from an older trigger.
	used := map[string]bool{}
	if ref := tr.AuthenticationRef; ref != nil {
		used[ref.Name] = true
		errs = append(errs, r.checkTriggerAuth(so, tr)...)
	}
	for _, ta := range r.triggerAuths {
		if !used[ta.Name] {
			fail("TriggerAuthentication %s is referenced by no trigger", ta.Name)
		}
	}
	return errs
}

// checkServerAddress: an http(s) URL the KEDA operator, in its own namespace, can resolve. An in-cluster
// name must carry its namespace, and that namespace must be the one the NetworkPolicies let Prometheus
// scrape the workers from: the Prometheus KEDA asks must be the one that has the service's metrics.
func (r *rendered) checkServerAddress(addr string) []error {
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return []error{fmt.Errorf("serverAddress %q: want the http(s) URL of a Prometheus", addr)}
	}
	host := u.Hostname()
	if net.ParseIP(host) != nil {
		return nil
	}
	if !strings.Contains(host, ".") {
		return []error{fmt.Errorf("serverAddress %q: KEDA's operator runs in namespace %s and cannot resolve %q; name the Service with its namespace (%s.NAMESPACE.svc.cluster.local)",
			addr, kedaOperator.namespace, host, host)}
	}
	svc, ok := strings.CutSuffix(host, ".svc.cluster.local")
	if !ok {
		svc, ok = strings.CutSuffix(host, ".svc")
	}
	parts := strings.Split(svc, ".")
	if !ok && len(parts) != 2 {
		return nil // an address outside the cluster (a managed Prometheus): nothing to check offline
	}
	if len(parts) != 2 {
		return []error{fmt.Errorf("serverAddress %q: want SERVICE.NAMESPACE.svc[.cluster.local]", addr)}
	}
	ns := parts[1]
	workers := r.byRole("worker")
	if len(workers) != 1 {
		return nil // checkNetworkPolicies reports it
	}
	w := workers[0]
	port, err := w.httpPort()
	if err != nil {
		return nil
	}
	peer := nsPeer("Prometheus in "+ns, ns, prometheus.podLabels)
	if !r.ingressAllowed(w.w.namespace, w.w.template.Labels, &w.w.template.Spec, port, peer) {
		return []error{fmt.Errorf("serverAddress %q is a Prometheus in namespace %s, but the NetworkPolicies let Prometheus scrape the workers only from namespace %s: that Prometheus has no worker metrics",
			addr, ns, prometheus.namespace)}
	}
	return nil
}

// checkScalerQuery: the query parses as PromQL; each selector names a family internal/metrics defines,
// with the job of the role that exports it and the ScaledObject's namespace; a family every API replica
// exports alike is taken once (max or min across replicas) before any sum; and the result is one series,
// since KEDA refuses a result of several.
func checkScalerQuery(q, namespace string) []error {
	var errs []error
	fail := func(f string, a ...any) { errs = append(errs, fmt.Errorf("query %q: "+f, append([]any{q}, a...)...)) }
	expr, err := promParser.ParseExpr(q)
	if err != nil {
		fail("%v", err)
		return errs
	}
	if t := expr.Type(); t != parser.ValueTypeVector && t != parser.ValueTypeScalar {
		fail("a %s, KEDA needs an instant vector of one series", t)
	}
	if !singleSeries(expr) {
		fail("may return several series (KEDA fails on more than one): aggregate it to one, e.g. sum(...)")
	}
	cat := metricCatalogue()
	var n int
	parser.Inspect(expr, func(node parser.Node, path []parser.Node) error {
		if be, ok := node.(*parser.BinaryExpr); ok && be.Op == parser.LOR && (len(parser.ExtractSelectors(be.LHS)) == 0 || len(parser.ExtractSelectors(be.RHS)) == 0) {
			fail("`or` a constant turns an empty result (no API scraped, Redis down) into a number: KEDA would scale on it instead of falling back")
		}
		vs, ok := node.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		n++
		name := vs.Name
		var job, ns *labels.Matcher
		for _, m := range vs.LabelMatchers {
			switch m.Name {
			case labels.MetricName:
				if m.Type == labels.MatchEqual {
					name = m.Value
				}
			case "job":
				job = m
			case "namespace":
				ns = m
			}
		}
		fam, ok := cat.family(name)
		if !ok {
			fail("%s is not a metric of internal/metrics", name)
			return nil
		}
		var jobs []string
		for _, role := range cat.roles[fam] {
			jobs = append(jobs, wantJobs[role])
		}
		if job == nil || job.Type != labels.MatchEqual || !slices.Contains(jobs, job.Value) {
			fail("%s: want job= one of %q, the scrape jobs of the processes exporting it (%v)", name, jobs, cat.roles[fam])
		}
		if ns == nil || ns.Type != labels.MatchEqual || ns.Value != namespace {
			fail("%s: want namespace=%q, the ScaledObject's own, so that no other deployment's backlog is counted", name, namespace)
		}
		if cat.global[fam] && !takenOnce(path) {
			fail("%s is exported alike by every API replica and would be counted once per replica: take max by (queue) across them first", name)
		}
		return nil
	})
	if n == 0 {
		fail("selects no metric")
	}
	return errs
}

// takenOnce: the nearest aggregation above a selector (through functions such as rate) is max or min,
// which gives the replicas' common value once, whatever their number.
func takenOnce(path []parser.Node) bool {
	for i := len(path) - 1; i >= 0; i-- {
		if agg, ok := path[i].(*parser.AggregateExpr); ok {
			return agg.Op == parser.MAX || agg.Op == parser.MIN
		}
		if _, ok := path[i].(*parser.BinaryExpr); ok {
			return false
		}
	}
	return false
}

// singleSeries: the expression yields at most one series whatever the labels of what it selects.
func singleSeries(e parser.Expr) bool {
	switch x := e.(type) {
	case *parser.ParenExpr:
		return singleSeries(x.Expr)
	case *parser.NumberLiteral:
		return true
	case *parser.AggregateExpr:
		return !x.Without && len(x.Grouping) == 0 && !slices.Contains([]parser.ItemType{parser.TOPK, parser.BOTTOMK, parser.COUNT_VALUES}, x.Op)
	case *parser.BinaryExpr:
		return singleSeries(x.LHS) && singleSeries(x.RHS)
	case *parser.Call:
		return x.Type() == parser.ValueTypeScalar || x.Func.Name == "vector"
	}
	return false
}

// checkTriggerAuth: the trigger's TriggerAuthentication exists, and its Secret and ConfigMap keys exist
// (or the Secret is declared external).
func (r *rendered) checkTriggerAuth(so *kedav1alpha1.ScaledObject, tr kedav1alpha1.ScaleTriggers) []error {
	var errs []error
	fail := func(f string, a ...any) {
		errs = append(errs, fmt.Errorf("ScaledObject "+so.Name+" trigger "+tr.Name+": "+f, a...))
	}
	if k := tr.AuthenticationRef.Kind; k != "" && k != "TriggerAuthentication" {
		fail("authenticationRef kind %s", k)
	}
	var ta *kedav1alpha1.TriggerAuthentication
	for _, a := range r.triggerAuths {
		if a.Name == tr.AuthenticationRef.Name && a.Namespace == so.Namespace {
			ta = a
		}
	}
	if ta == nil {
		fail("TriggerAuthentication %s not rendered", tr.AuthenticationRef.Name)
		return errs
	}
	for _, ref := range ta.Spec.SecretTargetRef {
		if err := r.secretExists(ref.Name, ref.Key); err != nil {
			fail("parameter %s: %v", ref.Parameter, err)
		}
	}
	for _, ref := range ta.Spec.ConfigMapTargetRef {
		cm := r.configMap(ref.Name)
		if cm == nil {
			fail("parameter %s: ConfigMap %s not rendered", ref.Parameter, ref.Name)
		} else if _, ok := cm.Data[ref.Key]; !ok {
			fail("parameter %s: ConfigMap %s has no key %s", ref.Parameter, ref.Name, ref.Key)
		}
	}
	return errs
}

func TestScaledObjectScalesOnWorkBacklog(t *testing.T) { forEachOverlay(t, checkScaledObjects) }

// The catalogue the query is checked against is the service's: the work backlog is an API family every
// replica exports alike, the queue wait a worker's.
func TestMetricCatalogue(t *testing.T) {
	cat := metricCatalogue()
	want := map[string]string{"upsize_backlog_work_seconds": "api", "upsize_work_done_seconds_total": "api",
		"upsize_queue_tasks": "api", "upsize_task_queue_wait_seconds": "worker", "upsize_redis_up": "api worker"}
	for name, roles := range want {
		if got := strings.Join(cat.roles[name], " "); got != roles {
			t.Errorf("%s: exported by %q, want %q", name, got, roles)
		}
	}
	var global []string
	for n, g := range cat.global {
		if g {
			global = append(global, n)
		}
	}
	sort.Strings(global)
	for _, n := range []string{"upsize_backlog_work_seconds", "upsize_queue_tasks", "upsize_work_done_seconds_total"} {
		if !slices.Contains(global, n) {
			t.Errorf("%s is not known as exported alike by every API replica (%v)", n, global)
		}
	}
	if slices.Contains(global, "upsize_redis_up") {
		t.Error("upsize_redis_up is each process's own, not a global figure")
	}
}

// checkBacklogAlert: UpsizeBacklogWorkHigh warns that 429 queue_full answers are coming, so its threshold
// must stay below the bound in work the API enforces (QUEUE_MAX_BACKLOG_SECONDS) in every overlay; an
// overlay that lowers the bound must lower the alert too.
func checkBacklogAlert(r *rendered) []error {
	const alert = "UpsizeBacklogWorkHigh"
	var errs []error
	var found bool
	for _, pr := range r.prometheusRules {
		for _, g := range pr.Spec.Groups {
			for _, rl := range g.Rules {
				if rl.Alert != alert {
					continue
				}
				found = true
				expr, err := promParser.ParseExpr(rl.Expr.String())
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %v", alert, err))
					continue
				}
				be, ok := expr.(*parser.BinaryExpr)
				var lit *parser.NumberLiteral
				if ok {
					lit, ok = be.RHS.(*parser.NumberLiteral)
				}
				if !ok || be.Op != parser.GTR {
					errs = append(errs, fmt.Errorf("%s: want <work backlog> > <seconds>, got %s", alert, expr))
					continue
				}
				for _, api := range r.byRole("api") {
					bound := api.cfg.QueueMaxBacklogWork.Seconds()
					if bound > 0 && (lit.Val <= 0 || lit.Val >= bound) {
						errs = append(errs, fmt.Errorf("%s fires above %gs of work, but QUEUE_MAX_BACKLOG_SECONDS is %gs: it must warn before the 429s", alert, lit.Val, bound))
					}
				}
			}
		}
	}
	if !found {
		errs = append(errs, fmt.Errorf("no alert %s", alert))
	}
	return errs
}

func TestBacklogAlertBelowTheBound(t *testing.T) { forEachOverlay(t, checkBacklogAlert) }
