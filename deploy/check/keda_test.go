package check

import (
	"fmt"
	"math"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/expr-lang/expr"
	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"

	"upsize/internal/jobs"
)

// Trigger metadata and auth parameters KEDA's Redis scalers read (redisMetadata and redisConnectionInfo
// in KEDA v2.21 pkg/scalers/redis_scaler.go). KEDA ignores unknown keys, so a misspelt one would
// silently fall back to a default. Connection parameters belong in the TriggerAuthentication only.
var (
	redisTriggerMetadata = []string{"listName", "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl"}
	redisAuthParams      = []string{"address", "addresses", "host", "hosts", "port", "ports", "username", "password",
		"sentinelUsername", "sentinelPassword", "sentinelMaster", "tls", "cert", "key", "keyPassword", "ca"}
)

// wantLists is the queue backlog: asynq's pending and active keys of every queue the workers serve. Both
// are Redis LISTs in asynq v0.26 (enqueue LPUSHes pending, dequeue RPOPLPUSHes pending -> active, done
// LREMs active; internal/rdb), which KEDA's redis scaler counts with LLEN. Importing upsize/internal/jobs
// links libvips (it imports internal/imageops, cgo), as the service's own tests do.
func wantLists() []string {
	var l []string
	for _, q := range jobs.Queues {
		l = append(l, jobs.PendingKey(q), jobs.ActiveKey(q))
	}
	sort.Strings(l)
	return l
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

	workers := r.byRole("worker")
	if len(workers) != 1 || so.Spec.ScaleTargetRef == nil || workers[0].w.name != so.Spec.ScaleTargetRef.Name {
		fail("does not target the worker Deployment")
	}

	// The queues: exactly one trigger per pending and active list of each queue, each a Redis list length.
	wantType := "redis"
	if r.expect.sentinel {
		wantType = "redis-sentinel"
	}
	var lists []string
	for _, tr := range so.Spec.Triggers {
		if tr.Type != wantType {
			fail("trigger %s: type %s, want %s", tr.Name, tr.Type, wantType)
		}
		lists = append(lists, tr.Metadata["listName"])
		for k := range tr.Metadata {
			if !slices.Contains(redisTriggerMetadata, k) {
				fail("trigger %s: metadata %s is not a Redis list-length setting (connection settings go in the TriggerAuthentication)", tr.Name, k)
			}
		}
		errs = append(errs, r.checkTriggerAuth(so, tr)...)
		errs = append(errs, r.checkDatabaseIndex(so, tr)...)
	}
	sort.Strings(lists)
	if !slices.Equal(lists, wantLists()) {
		fail("lists %q, want the asynq keys %q (jobs.PendingKey, jobs.ActiveKey of jobs.Queues)", lists, wantLists())
	}

	// The backlog is the SUM of the lists. KEDA's own validation compiles the formula; then it is run with
	// a distinct power of ten per trigger, so leaving one out or taking a max shows.
	adv := so.Spec.Advanced
	if adv == nil || adv.ScalingModifiers.Formula == "" {
		fail("no scalingModifiers formula: separate triggers scale on the largest list, not on the backlog")
		return errs
	}
	prog, err := kedav1alpha1.ValidateAndCompileScalingModifiers(so)
	if err != nil {
		fail("%v", err)
		return errs
	}
	env := map[string]float64{}
	want := 0.0
	for i, tr := range so.Spec.Triggers {
		v := math.Pow10(i)
		env[tr.Name] = v
		want += v
	}
	got, err := expr.Run(prog, env)
	if err != nil {
		fail("formula: %v", err)
	} else if f, ok := got.(float64); !ok || f != want {
		fail("formula %q gives %v for lists %v, want their sum %v", adv.ScalingModifiers.Formula, got, env, want)
	}
	if adv.ScalingModifiers.MetricType != autoscalingv2.AverageValueMetricType {
		fail("scalingModifiers metricType %q: the backlog is shared among workers, want AverageValue", adv.ScalingModifiers.MetricType)
	}
	// A target below a worker's concurrency would add workers while existing ones still have free slots.
	target, err := strconv.ParseFloat(adv.ScalingModifiers.Target, 64)
	for _, w := range workers {
		if err != nil || target < float64(w.cfg.WorkerConcurrency) {
			fail("target %q backlog per worker is below WORKER_CONCURRENCY %d", adv.ScalingModifiers.Target, w.cfg.WorkerConcurrency)
		}
	}
	return errs
}

// checkTriggerAuth: the trigger's TriggerAuthentication exists, gives the parameters the scaler needs,
// and its Secret and ConfigMap keys exist (or the Secret is declared external).
func (r *rendered) checkTriggerAuth(so *kedav1alpha1.ScaledObject, tr kedav1alpha1.ScaleTriggers) []error {
	var errs []error
	fail := func(f string, a ...any) {
		errs = append(errs, fmt.Errorf("ScaledObject "+so.Name+" trigger "+tr.Name+": "+f, a...))
	}
	if tr.AuthenticationRef == nil {
		fail("no authenticationRef: KEDA would not know where Redis is")
		return errs
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
	params := map[string]bool{}
	for _, ref := range ta.Spec.SecretTargetRef {
		params[ref.Parameter] = true
		if err := r.secretExists(ref.Name, ref.Key); err != nil {
			fail("parameter %s: %v", ref.Parameter, err)
		}
	}
	for _, ref := range ta.Spec.ConfigMapTargetRef {
		params[ref.Parameter] = true
		cm := r.configMap(ref.Name)
		if cm == nil {
			fail("parameter %s: ConfigMap %s not rendered", ref.Parameter, ref.Name)
		} else if _, ok := cm.Data[ref.Key]; !ok {
			fail("parameter %s: ConfigMap %s has no key %s", ref.Parameter, ref.Name, ref.Key)
		}
	}
	for p := range params {
		if !slices.Contains(redisAuthParams, p) {
			fail("TriggerAuthentication %s: %s is not a Redis scaler parameter", ta.Name, p)
		}
	}
	if !params["address"] && !params["addresses"] {
		fail("TriggerAuthentication %s gives no address", ta.Name)
	}
	if r.expect.sentinel && !params["sentinelMaster"] {
		fail("TriggerAuthentication %s: Sentinel needs sentinelMaster", ta.Name)
	}
	// Where Redis runs in the cluster, KEDA (in its own namespace) must reach that Redis.
	if r.expect.inClusterRedis {
		for _, ref := range ta.Spec.ConfigMapTargetRef {
			if ref.Parameter != "address" {
				continue
			}
			if cm := r.configMap(ref.Name); cm != nil {
				for _, w := range r.workloads() {
					if w.kind == "StatefulSet" {
						if err := r.pointsAtRedis(cm.Data[ref.Key], "keda", w, true); err != nil {
							fail("address: %v", err)
						}
					}
				}
			}
		}
	}
	return errs
}

// checkDatabaseIndex: KEDA must count the lists in the database the service uses (REDIS_URL's path).
// Where REDIS_URL is a Secret, docs/deploy.md tells the operator to keep them equal.
func (r *rendered) checkDatabaseIndex(so *kedav1alpha1.ScaledObject, tr kedav1alpha1.ScaleTriggers) []error {
	var errs []error
	idx := 0
	if s, ok := tr.Metadata["databaseIndex"]; ok {
		n, err := strconv.Atoi(s)
		if err != nil {
			return []error{fmt.Errorf("ScaledObject %s trigger %s: databaseIndex %q", so.Name, tr.Name, s)}
		}
		idx = n
	}
	for _, uc := range r.byRole("worker") {
		v := uc.env["REDIS_URL"]
		if v.source == "secret" {
			continue
		}
		u, err := url.Parse(v.value)
		if err != nil {
			continue // checkRedisURL reports it
		}
		db := 0
		if p := strings.Trim(u.Path, "/"); p != "" {
			if db, err = strconv.Atoi(p); err != nil {
				errs = append(errs, fmt.Errorf("%s: REDIS_URL database %q", uc.w, p))
			}
		}
		if db != idx {
			errs = append(errs, fmt.Errorf("ScaledObject %s trigger %s: databaseIndex %d, REDIS_URL uses database %d", so.Name, tr.Name, idx, db))
		}
	}
	return errs
}

func TestScaledObjectCountsQueueBacklog(t *testing.T) { forEachOverlay(t, checkScaledObjects) }
