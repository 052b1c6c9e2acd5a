package check

import (
	"fmt"
	"maps"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"upsize/internal/config"
)

// assumedP99TaskTime is the measured p99 of one upsize task that SHUTDOWN_TIMEOUT must exceed, so that
// a worker stopped by a rollout or scale-down nearly always finishes what it runs. Keep it equal to the
// figure in docs/deploy.md ("Shutdown timing") and update both from production measurements.
const assumedP99TaskTime = 30 * time.Second

// workerHealthShutdown bounds the worker's health-server shutdown after asynq's (cmd/worker/main.go).
const workerHealthShutdown = 5 * time.Second

func checkSelectors(r *rendered) []error {
	var errs []error
	ws := r.workloads()
	for _, w := range ws {
		if !selects(w.selector, w.template.Labels) {
			errs = append(errs, fmt.Errorf("%s: selector %v does not match its own pod labels %v", w, w.selector, w.template.Labels))
		}
		for _, o := range ws {
			if o != w && selects(w.selector, o.template.Labels) {
				errs = append(errs, fmt.Errorf("%s: selector also matches the pods of %s", w, o))
			}
		}
	}
	return errs
}

// podsOf lists the workloads whose pods a Service-style selector picks in a namespace.
func (r *rendered) podsOf(ns string, sel map[string]string) []workload {
	var out []workload
	for _, w := range r.workloads() {
		if w.namespace == ns && matchMap(sel, w.template.Labels) {
			out = append(out, w)
		}
	}
	return out
}

func checkServices(r *rendered) []error {
	var errs []error
	for _, s := range r.services {
		pods := r.podsOf(s.Namespace, s.Spec.Selector)
		if len(pods) == 0 {
			errs = append(errs, fmt.Errorf("Service %s: selector %v matches no pods", s.Name, s.Spec.Selector))
		}
		for _, w := range pods {
			for _, p := range s.Spec.Ports {
				tp := p.TargetPort
				if tp.Type == intstr.Int && tp.IntVal == 0 {
					tp = intstr.FromInt32(p.Port)
				}
				if _, ok := resolvePort(&w.template.Spec, tp); !ok {
					errs = append(errs, fmt.Errorf("Service %s port %s: targetPort %s is not a container port of %s", s.Name, p.Name, tp.String(), w))
				}
			}
		}
	}
	for _, st := range r.statefulSets {
		ok := false
		for _, s := range r.services {
			if s.Name == st.Spec.ServiceName && s.Spec.ClusterIP == corev1.ClusterIPNone && matchMap(s.Spec.Selector, st.Spec.Template.Labels) {
				ok = true
			}
		}
		if !ok {
			errs = append(errs, fmt.Errorf("StatefulSet %s: serviceName %q is not a headless Service selecting its pods", st.Name, st.Spec.ServiceName))
		}
	}
	return errs
}

// minReplicas is the fewest pods a workload runs: its autoscaler's minimum, else its replicas.
func (r *rendered) minReplicas(w workload) int32 {
	for _, h := range r.hpas {
		if h.Spec.ScaleTargetRef.Kind == w.kind && h.Spec.ScaleTargetRef.Name == w.name && h.Spec.MinReplicas != nil {
			return *h.Spec.MinReplicas
		}
	}
	for _, so := range r.scaledObjects {
		if so.Spec.ScaleTargetRef != nil && so.Spec.ScaleTargetRef.Name == w.name && so.Spec.MinReplicaCount != nil {
			return *so.Spec.MinReplicaCount
		}
	}
	if w.replicas != nil {
		return *w.replicas
	}
	return 1
}

func checkPDBs(r *rendered) []error {
	var errs []error
	covered := map[string]bool{}
	for _, p := range r.pdbs {
		var pods []workload
		for _, w := range r.workloads() {
			if w.namespace == p.Namespace && selects(p.Spec.Selector, w.template.Labels) {
				pods = append(pods, w)
			}
		}
		if len(pods) != 1 {
			errs = append(errs, fmt.Errorf("PodDisruptionBudget %s: selects the pods of %d workloads %v, want exactly one", p.Name, len(pods), pods))
			continue
		}
		w := pods[0]
		covered[w.String()] = true
		switch {
		case p.Spec.MaxUnavailable != nil:
			n, err := intstr.GetScaledValueFromIntOrPercent(p.Spec.MaxUnavailable, int(r.minReplicas(w)), true)
			if err != nil || n < 1 {
				errs = append(errs, fmt.Errorf("PodDisruptionBudget %s: maxUnavailable %s allows no eviction at %d replicas", p.Name, p.Spec.MaxUnavailable, r.minReplicas(w)))
			}
		case p.Spec.MinAvailable != nil:
			n, err := intstr.GetScaledValueFromIntOrPercent(p.Spec.MinAvailable, int(r.minReplicas(w)), true)
			if err != nil || n >= int(r.minReplicas(w)) {
				errs = append(errs, fmt.Errorf("PodDisruptionBudget %s: minAvailable %s blocks every eviction at %d replicas", p.Name, p.Spec.MinAvailable, r.minReplicas(w)))
			}
		default:
			errs = append(errs, fmt.Errorf("PodDisruptionBudget %s: neither minAvailable nor maxUnavailable", p.Name))
		}
	}
	for _, d := range r.deployments {
		if !covered["Deployment/"+d.Name] {
			errs = append(errs, fmt.Errorf("Deployment %s: no PodDisruptionBudget", d.Name))
		}
	}
	return errs
}

// checkAutoscaling: each Deployment has exactly one autoscaler (an HPA and a ScaledObject would fight),
// which targets it by name and kind, and the Deployment leaves replicas to it.
func checkAutoscaling(r *rendered) []error {
	var errs []error
	scalers := map[string][]string{}
	for _, h := range r.hpas {
		ref := h.Spec.ScaleTargetRef
		if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" {
			errs = append(errs, fmt.Errorf("HPA %s: targets %s %s, want apps/v1 Deployment", h.Name, ref.APIVersion, ref.Kind))
		}
		scalers[ref.Name] = append(scalers[ref.Name], "HPA "+h.Name)
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 1 {
			errs = append(errs, fmt.Errorf("HPA %s: minReplicas must be at least 1", h.Name))
		}
		cpu := false
		for _, m := range h.Spec.Metrics {
			if m.Resource != nil && m.Resource.Name == corev1.ResourceCPU && m.Resource.Target.AverageUtilization != nil {
				cpu = true
			}
		}
		if !cpu {
			errs = append(errs, fmt.Errorf("HPA %s: no CPU utilisation metric", h.Name))
		}
		for _, d := range r.deployments {
			if d.Name != ref.Name {
				continue
			}
			for _, c := range d.Spec.Template.Spec.Containers {
				if c.Resources.Requests.Cpu().IsZero() {
					errs = append(errs, fmt.Errorf("HPA %s: container %s has no CPU request, so CPU utilisation is undefined", h.Name, c.Name))
				}
			}
		}
	}
	for _, so := range r.scaledObjects {
		ref := so.Spec.ScaleTargetRef
		if ref == nil {
			errs = append(errs, fmt.Errorf("ScaledObject %s: no scaleTargetRef", so.Name))
			continue
		}
		if (ref.APIVersion != "" && ref.APIVersion != "apps/v1") || (ref.Kind != "" && ref.Kind != "Deployment") {
			errs = append(errs, fmt.Errorf("ScaledObject %s: targets %s %s, want apps/v1 Deployment", so.Name, ref.APIVersion, ref.Kind))
		}
		scalers[ref.Name] = append(scalers[ref.Name], "ScaledObject "+so.Name)
	}
	for name, s := range scalers {
		found := false
		for _, d := range r.deployments {
			found = found || d.Name == name
		}
		if !found {
			errs = append(errs, fmt.Errorf("%v: target Deployment %s is not rendered", s, name))
		}
	}
	for _, d := range r.deployments {
		if len(scalers[d.Name]) != 1 {
			errs = append(errs, fmt.Errorf("Deployment %s: scaled by %v, want exactly one autoscaler", d.Name, scalers[d.Name]))
		}
		if d.Spec.Replicas != nil {
			errs = append(errs, fmt.Errorf("Deployment %s: sets replicas, which every apply would reset under its autoscaler", d.Name))
		}
	}
	return errs
}

// checkEnvNames: every variable given to the API or a worker is one internal/config reads (a misspelt
// name would silently leave the default) or one of sdkEnvNames, and internal/config accepts every value.
func checkEnvNames(r *rendered) []error {
	known := config.Names()
	ucs, errs := r.upsizeContainers()
	for _, uc := range ucs {
		for name := range uc.env {
			if !slices.Contains(known, name) && !slices.Contains(sdkEnvNames, name) {
				errs = append(errs, fmt.Errorf("%s: env %s is not read by internal/config (config.Names) nor in sdkEnvNames", uc.w, name))
			}
		}
	}
	if len(ucs) == 0 {
		errs = append(errs, fmt.Errorf("no API or worker container"))
	}
	return errs
}

// sdkEnvNames are variables the service reads through a library rather than internal/config: the AWS
// SDK's default credential chain and region lookup in internal/blob (an s3:// BLOB_URL). Only these few,
// which docs/deploy.md describes; a misspelt one (AWS_SECRET_KEY) fails checkEnvNames like any other.
var sdkEnvNames = []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION"}

// awsCredentialNames are the sdkEnvNames that are secrets.
var awsCredentialNames = []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}

// checkRoles: one API Deployment and one worker Deployment, each role with its HTTP_ADDR port declared
// as a container port.
func checkRoles(r *rendered) []error {
	var errs []error
	for _, role := range []string{"api", "worker"} {
		ucs := r.byRole(role)
		if len(ucs) != 1 {
			errs = append(errs, fmt.Errorf("%d %s containers, want one (in one Deployment)", len(ucs), role))
		}
		for _, uc := range ucs {
			port, err := uc.httpPort()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", uc.w, err))
				continue
			}
			if _, ok := resolvePort(&uc.w.template.Spec, intstr.FromInt32(port)); !ok {
				errs = append(errs, fmt.Errorf("%s: HTTP_ADDR port %d is not a container port", uc.w, port))
			}
		}
	}
	return errs
}

// probeRoutes are the routes each binary serves (TestBinariesServeProbedRoutes reads them in the source).
var probeRoutes = struct{ ready, live string }{"/readyz", "/healthz"}

func checkProbes(r *rendered) []error {
	ucs, errs := r.upsizeContainers()
	for _, uc := range ucs {
		port, err := uc.httpPort()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range []struct {
			kind  string
			probe *corev1.Probe
			path  string
		}{{"readiness", uc.c.ReadinessProbe, probeRoutes.ready}, {"liveness", uc.c.LivenessProbe, probeRoutes.live}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				errs = append(errs, fmt.Errorf("%s: no HTTP %s probe", uc.w, p.kind))
				continue
			}
			if p.probe.HTTPGet.Path != p.path {
				errs = append(errs, fmt.Errorf("%s: %s probe path %s, the binary serves %s", uc.w, p.kind, p.probe.HTTPGet.Path, p.path))
			}
			got, ok := resolvePort(&uc.w.template.Spec, p.probe.HTTPGet.Port)
			if !ok || got != port {
				errs = append(errs, fmt.Errorf("%s: %s probe port %s is not HTTP_ADDR's port %d", uc.w, p.kind, p.probe.HTTPGet.Port.String(), port))
			}
		}
	}
	return errs
}

// checkShutdownTiming: the kubelet's SIGKILL must come after each binary's own bounded shutdown.
func checkShutdownTiming(r *rendered) []error {
	ucs, errs := r.upsizeContainers()
	for _, uc := range ucs {
		gp := uc.w.template.Spec.TerminationGracePeriodSeconds
		if gp == nil {
			errs = append(errs, fmt.Errorf("%s: terminationGracePeriodSeconds not set", uc.w))
			continue
		}
		grace := time.Duration(*gp) * time.Second
		sleep, err := preStopSleep(uc.c)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", uc.w, err))
		}
		switch uc.role {
		case "api":
			need := sleep + uc.cfg.DrainDelay + uc.cfg.DrainTimeout
			if grace <= need {
				errs = append(errs, fmt.Errorf("%s: grace %s <= preStop %s + DRAIN_DELAY %s + DRAIN_TIMEOUT %s", uc.w, grace, sleep, uc.cfg.DrainDelay, uc.cfg.DrainTimeout))
			}
			if uc.cfg.DrainDelay <= 0 {
				errs = append(errs, fmt.Errorf("%s: DRAIN_DELAY is 0: load balancers would still send to a pod that stopped serving", uc.w))
			}
			if rp := uc.c.ReadinessProbe; rp != nil {
				seen := time.Duration(max(rp.PeriodSeconds, 1)*max(rp.FailureThreshold, 1)) * time.Second
				if seen > uc.cfg.DrainDelay {
					errs = append(errs, fmt.Errorf("%s: readiness needs %s to see a draining pod, more than DRAIN_DELAY %s", uc.w, seen, uc.cfg.DrainDelay))
				}
			}
		case "worker":
			if sleep != 0 {
				errs = append(errs, fmt.Errorf("%s: a preStop sleep only delays the hand-back of tasks", uc.w))
			}
			if grace <= uc.cfg.ShutdownTimeout+workerHealthShutdown {
				errs = append(errs, fmt.Errorf("%s: grace %s <= SHUTDOWN_TIMEOUT %s + %s health-server shutdown", uc.w, grace, uc.cfg.ShutdownTimeout, workerHealthShutdown))
			}
			if uc.cfg.ShutdownTimeout <= assumedP99TaskTime {
				errs = append(errs, fmt.Errorf("%s: SHUTDOWN_TIMEOUT %s <= the p99 task time %s", uc.w, uc.cfg.ShutdownTimeout, assumedP99TaskTime))
			}
		}
	}
	return errs
}

// checkWorkerConcurrency: tasks are CPU-bound, so a worker runs one task per requested core (each
// evaluation using VIPS_CONCURRENCY threads), and says so explicitly instead of counting the node's CPUs.
func checkWorkerConcurrency(r *rendered) []error {
	var errs []error
	for _, uc := range r.byRole("worker") {
		if uc.env["WORKER_CONCURRENCY"].source != "literal" {
			errs = append(errs, fmt.Errorf("%s: WORKER_CONCURRENCY not set in the Deployment (the default counts the node's CPUs)", uc.w))
		}
		threads := max(uc.cfg.VipsConcurrency, 1)
		cpu := uc.c.Resources.Requests.Cpu()
		if cpu.MilliValue()%1000 != 0 {
			errs = append(errs, fmt.Errorf("%s: CPU request %s is not whole cores", uc.w, cpu))
		}
		if int64(uc.cfg.WorkerConcurrency*threads)*1000 != cpu.MilliValue() {
			errs = append(errs, fmt.Errorf("%s: WORKER_CONCURRENCY %d x %d libvips threads != CPU request %s", uc.w, uc.cfg.WorkerConcurrency, threads, cpu))
		}
	}
	return errs
}

// checkSecurity: nothing runs as root or can gain privileges; the service runs as the image's user.
func checkSecurity(r *rendered, imageUID int64) []error {
	var errs []error
	for _, w := range r.workloads() {
		ps := w.template.Spec.SecurityContext
		if ps == nil {
			ps = &corev1.PodSecurityContext{}
		}
		for _, c := range allContainers(&w.template.Spec) {
			cs := c.SecurityContext
			if cs == nil {
				cs = &corev1.SecurityContext{}
			}
			nonRoot, uid := ps.RunAsNonRoot, ps.RunAsUser
			if cs.RunAsNonRoot != nil {
				nonRoot = cs.RunAsNonRoot
			}
			if cs.RunAsUser != nil {
				uid = cs.RunAsUser
			}
			if nonRoot == nil || !*nonRoot {
				errs = append(errs, fmt.Errorf("%s/%s: runAsNonRoot is not true", w, c.Name))
			}
			if uid == nil || *uid == 0 {
				errs = append(errs, fmt.Errorf("%s/%s: no non-zero runAsUser", w, c.Name))
			} else if roleOf(c) != "" && *uid != imageUID {
				errs = append(errs, fmt.Errorf("%s/%s: runs as %d, the image's user is %d", w, c.Name, *uid, imageUID))
			}
			if cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation {
				errs = append(errs, fmt.Errorf("%s/%s: allowPrivilegeEscalation is not false", w, c.Name))
			}
			if cs.Capabilities == nil || !slices.Contains(cs.Capabilities.Drop, "ALL") || len(cs.Capabilities.Add) > 0 {
				errs = append(errs, fmt.Errorf("%s/%s: capabilities must drop ALL and add none", w, c.Name))
			}
			if cs.Privileged != nil && *cs.Privileged {
				errs = append(errs, fmt.Errorf("%s/%s: privileged", w, c.Name))
			}
		}
	}
	return errs
}

// checkResources: every container requests CPU and memory and has a memory limit at least its request.
func checkResources(r *rendered) []error {
	var errs []error
	for _, w := range r.workloads() {
		for _, c := range allContainers(&w.template.Spec) {
			req, lim := c.Resources.Requests, c.Resources.Limits
			for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				if q, ok := req[name]; !ok || q.Sign() <= 0 {
					errs = append(errs, fmt.Errorf("%s/%s: no %s request", w, c.Name, name))
				}
				if l, ok := lim[name]; ok {
					if q := req[name]; l.Cmp(q) < 0 {
						errs = append(errs, fmt.Errorf("%s/%s: %s limit %s below request %s", w, c.Name, name, l.String(), q.String()))
					}
				}
			}
			if _, ok := lim[corev1.ResourceMemory]; !ok {
				errs = append(errs, fmt.Errorf("%s/%s: no memory limit", w, c.Name))
			}
		}
	}
	return errs
}

// objectStoreSchemes are the BLOB_URL schemes of object stores (internal/blob): what every pod on any
// node reaches alike. (gs and azblob need an image built with -tags blob_clouds.)
var objectStoreSchemes = []string{"s3", "gs", "azblob"}

// checkBlobVolume: where image bytes live. Every overlay sets BLOB_URL itself (the default is a directory
// in the image's read-only root filesystem), the API and the workers use the same one (else uploads
// would not reach the workers), and:
//   - an overlay with a volume (single-node, one node) mounts one PersistentVolumeClaim, writable, at
//     BLOB_URL's directory in every API and worker pod; ReadWriteOnce does on one node, ReadWriteOncePod
//     (one pod) does not;
//   - an object-store overlay (production) has an object store's BLOB_URL, or takes it from a required
//     Secret key, and neither mounts nor renders a PersistentVolumeClaim: no ReadWriteMany storage.
func checkBlobVolume(r *rendered) []error {
	ucs, errs := r.upsizeContainers()
	urls := map[string]bool{}
	claims := map[string]bool{}
	for _, uc := range ucs {
		v, set := uc.env["BLOB_URL"]
		switch {
		case !set || (v.source != "secret" && v.value == ""):
			errs = append(errs, fmt.Errorf("%s: BLOB_URL not set: the default %s is in the image's read-only root filesystem", uc.w, uc.cfg.BlobURL))
		case v.source == "secret":
			urls["Secret "+v.ref.Name+" key "+v.ref.Key] = true
			if v.ref.Optional != nil && *v.ref.Optional {
				errs = append(errs, fmt.Errorf("%s: BLOB_URL from an optional Secret key would fall back to a directory in the image", uc.w))
			}
		default:
			urls[v.value] = true
		}
		type mount struct{ path, claim string }
		var mounted []mount
		for _, m := range uc.c.VolumeMounts {
			for _, vol := range uc.w.template.Spec.Volumes {
				if vol.Name == m.Name && vol.PersistentVolumeClaim != nil {
					mounted = append(mounted, mount{m.MountPath, vol.PersistentVolumeClaim.ClaimName})
					if m.ReadOnly && m.MountPath == filepath.Clean(uc.cfg.BlobDir) {
						errs = append(errs, fmt.Errorf("%s: blob volume mounted read-only", uc.w))
					}
				}
			}
		}
		switch r.expect.blobs {
		case blobVolume:
			if v.source == "secret" || uc.cfg.BlobDir == "" {
				errs = append(errs, fmt.Errorf("%s: BLOB_URL %s: this overlay keeps image bytes on a volume, want file:///path", uc.w, uc.cfg.BlobURL))
				continue
			}
			claim := ""
			for _, m := range mounted {
				if m.path == filepath.Clean(uc.cfg.BlobDir) {
					claim = m.claim
				}
			}
			if claim == "" {
				errs = append(errs, fmt.Errorf("%s: no PersistentVolumeClaim mounted at BLOB_URL's directory %s", uc.w, uc.cfg.BlobDir))
				continue
			}
			claims[claim] = true
		case blobObjectStore:
			for _, m := range mounted {
				errs = append(errs, fmt.Errorf("%s: mounts PersistentVolumeClaim %s at %s: image bytes belong in the object store, no pod needs a shared volume", uc.w, m.claim, m.path))
			}
			if v.source != "secret" {
				if u, err := url.Parse(uc.cfg.BlobURL); err != nil || !slices.Contains(objectStoreSchemes, u.Scheme) {
					errs = append(errs, fmt.Errorf("%s: BLOB_URL %s is not an object store (want %v://…, or a Secret key)", uc.w, uc.cfg.BlobURL, objectStoreSchemes))
				}
			}
		default:
			errs = append(errs, fmt.Errorf("overlay %s: no blob storage expectation in render_test.go", r.overlay))
		}
	}
	if len(urls) > 1 {
		errs = append(errs, fmt.Errorf("the API and the workers use different BLOB_URLs %v: uploads would not reach the workers", slices.Sorted(maps.Keys(urls))))
	}
	switch r.expect.blobs {
	case blobVolume:
		if len(claims) != 1 {
			errs = append(errs, fmt.Errorf("API and workers mount blob claims %v, want one shared claim", claims))
		}
		for claim := range claims {
			var pvc *corev1.PersistentVolumeClaim
			for _, p := range r.pvcs {
				if p.Name == claim {
					pvc = p
				}
			}
			if pvc == nil {
				errs = append(errs, fmt.Errorf("PersistentVolumeClaim %s is not rendered", claim))
				continue
			}
			if slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOncePod) || len(pvc.Spec.AccessModes) == 0 {
				errs = append(errs, fmt.Errorf("PersistentVolumeClaim %s: access modes %v, want ReadWriteOnce (one node) so that every pod on it mounts it", claim, pvc.Spec.AccessModes))
			}
		}
	case blobObjectStore:
		for _, p := range r.pvcs {
			errs = append(errs, fmt.Errorf("PersistentVolumeClaim %s %v rendered: this overlay keeps image bytes in an object store and needs no volume", p.Name, p.Spec.AccessModes))
		}
	}
	return errs
}

// checkStoreCredentials: the object store's credentials come from the Secret only (never a literal or
// the ConfigMap), as optional keys, so that the same manifests run with workload identity and no keys;
// an access key comes with its secret. In an object-store overlay the API and the workers run as one
// rendered ServiceAccount of their own, the one operators annotate for workload identity.
func checkStoreCredentials(r *rendered) []error {
	ucs, errs := r.upsizeContainers()
	accounts := map[string]bool{}
	for _, uc := range ucs {
		for _, name := range awsCredentialNames {
			v, ok := uc.env[name]
			switch {
			case !ok:
			case v.source != "secret":
				errs = append(errs, fmt.Errorf("%s: %s from a %s: credentials must come from a Secret", uc.w, name, v.source))
			case v.ref.Optional == nil || !*v.ref.Optional:
				errs = append(errs, fmt.Errorf("%s: %s from a required Secret key: make it optional, so that workload identity works without keys", uc.w, name))
			}
		}
		_, id := uc.env["AWS_ACCESS_KEY_ID"]
		_, secret := uc.env["AWS_SECRET_ACCESS_KEY"]
		if id != secret {
			errs = append(errs, fmt.Errorf("%s: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY come together or not at all", uc.w))
		}
		accounts[uc.w.template.Spec.ServiceAccountName] = true
	}
	if r.expect.blobs == blobObjectStore {
		names := slices.Sorted(maps.Keys(accounts))
		if len(names) != 1 || names[0] == "" || names[0] == "default" {
			errs = append(errs, fmt.Errorf("API and workers run as ServiceAccounts %q: want one of their own, for one workload identity annotation", names))
		}
	}
	return errs
}

// checkReferences: every ConfigMap, Secret, claim and ServiceAccount a pod uses exists (or is a declared external
// Secret); a missing one keeps pods from starting.
func checkReferences(r *rendered) []error {
	var errs []error
	for _, w := range r.workloads() {
		if sa := w.template.Spec.ServiceAccountName; sa != "" && sa != "default" &&
			!slices.ContainsFunc(r.serviceAccounts, func(a *corev1.ServiceAccount) bool { return a.Name == sa }) {
			errs = append(errs, fmt.Errorf("%s: ServiceAccount %s not rendered", w, sa))
		}
		for _, v := range w.template.Spec.Volumes {
			switch {
			case v.PersistentVolumeClaim != nil:
				found := false
				for _, p := range r.pvcs {
					found = found || p.Name == v.PersistentVolumeClaim.ClaimName
				}
				if !found {
					errs = append(errs, fmt.Errorf("%s: volume %s: claim %s not rendered", w, v.Name, v.PersistentVolumeClaim.ClaimName))
				}
			case v.ConfigMap != nil:
				if r.configMap(v.ConfigMap.Name) == nil {
					errs = append(errs, fmt.Errorf("%s: volume %s: ConfigMap %s not rendered", w, v.Name, v.ConfigMap.Name))
				}
			case v.Secret != nil:
				errs = append(errs, fmt.Errorf("%s: volume %s: Secret volumes are not expected", w, v.Name))
			}
		}
		for i := range w.template.Spec.Containers {
			_, envErrs := r.env(&w.template.Spec.Containers[i])
			errs = append(errs, prefixed(w.String(), envErrs)...)
		}
	}
	return errs
}

// checkNamespace: one Namespace, and every namespaced object in it.
func checkNamespace(r *rendered) []error {
	if len(r.namespaces) != 1 {
		return []error{fmt.Errorf("%d Namespaces rendered, want 1", len(r.namespaces))}
	}
	ns := r.namespaces[0].Name
	var errs []error
	check := func(kind, name, got string) {
		if got != ns {
			errs = append(errs, fmt.Errorf("%s %s: namespace %q, want %q", kind, name, got, ns))
		}
	}
	for _, o := range r.configMaps {
		check("ConfigMap", o.Name, o.Namespace)
	}
	for _, o := range r.secrets {
		check("Secret", o.Name, o.Namespace)
	}
	for _, o := range r.services {
		check("Service", o.Name, o.Namespace)
	}
	for _, o := range r.pvcs {
		check("PersistentVolumeClaim", o.Name, o.Namespace)
	}
	for _, o := range r.serviceAccounts {
		check("ServiceAccount", o.Name, o.Namespace)
	}
	for _, w := range r.workloads() {
		check(w.kind, w.name, w.namespace)
	}
	for _, o := range r.hpas {
		check("HPA", o.Name, o.Namespace)
	}
	for _, o := range r.pdbs {
		check("PodDisruptionBudget", o.Name, o.Namespace)
	}
	for _, o := range r.netpols {
		check("NetworkPolicy", o.Name, o.Namespace)
	}
	for _, o := range r.serviceMonitors {
		check("ServiceMonitor", o.Name, o.Namespace)
	}
	for _, o := range r.prometheusRules {
		check("PrometheusRule", o.Name, o.Namespace)
	}
	for _, o := range r.scaledObjects {
		check("ScaledObject", o.Name, o.Namespace)
	}
	for _, o := range r.triggerAuths {
		check("TriggerAuthentication", o.Name, o.Namespace)
	}
	return errs
}

// checkServiceMonitors: each scrapes /metrics on a named port of Services that exist, and those ports
// reach the binary's HTTP_ADDR (where it serves /metrics); both roles are scraped, under the job names
// the dashboard and alerts query; every job an alert names is scraped.
func checkServiceMonitors(r *rendered) []error {
	var errs []error
	scraped := map[string]bool{}
	jobs := map[string]bool{}
	for _, sm := range r.serviceMonitors {
		if !sm.Spec.NamespaceSelector.Any && len(sm.Spec.NamespaceSelector.MatchNames) > 0 &&
			!slices.Contains(sm.Spec.NamespaceSelector.MatchNames, sm.Namespace) {
			errs = append(errs, fmt.Errorf("ServiceMonitor %s: namespaceSelector %v leaves out its own namespace", sm.Name, sm.Spec.NamespaceSelector.MatchNames))
		}
		var svcs []*corev1.Service
		for _, s := range r.services {
			if s.Namespace == sm.Namespace && selects(&sm.Spec.Selector, s.Labels) {
				svcs = append(svcs, s)
			}
		}
		if len(svcs) == 0 {
			errs = append(errs, fmt.Errorf("ServiceMonitor %s: selector matches no Service's labels", sm.Name))
		}
		if len(sm.Spec.Endpoints) == 0 {
			errs = append(errs, fmt.Errorf("ServiceMonitor %s: no endpoints", sm.Name))
		}
		for _, ep := range sm.Spec.Endpoints {
			if ep.Path != "/metrics" {
				errs = append(errs, fmt.Errorf("ServiceMonitor %s: path %q, the binaries serve /metrics", sm.Name, ep.Path))
			}
			if ep.Port == "" {
				errs = append(errs, fmt.Errorf("ServiceMonitor %s: endpoint without a named port", sm.Name))
				continue
			}
			for _, s := range svcs {
				var sp *corev1.ServicePort
				for i := range s.Spec.Ports {
					if s.Spec.Ports[i].Name == ep.Port {
						sp = &s.Spec.Ports[i]
					}
				}
				if sp == nil {
					errs = append(errs, fmt.Errorf("ServiceMonitor %s: Service %s has no port named %s", sm.Name, s.Name, ep.Port))
					continue
				}
				for _, uc := range append(r.byRole("api"), r.byRole("worker")...) {
					if uc.w.namespace != s.Namespace || !matchMap(s.Spec.Selector, uc.w.template.Labels) {
						continue
					}
					want, err := uc.httpPort()
					got, ok := resolvePort(&uc.w.template.Spec, sp.TargetPort)
					if err != nil || !ok || got != want {
						errs = append(errs, fmt.Errorf("ServiceMonitor %s: Service %s port %s reaches %s port %d, /metrics is on %d", sm.Name, s.Name, sp.Name, uc.w, got, want))
						continue
					}
					job, err := scrapeJob(sm, ep, s)
					if err != nil {
						errs = append(errs, fmt.Errorf("ServiceMonitor %s: %w", sm.Name, err))
					} else if job != wantJobs[uc.role] {
						errs = append(errs, fmt.Errorf("ServiceMonitor %s: the %s is scraped as job %q, dashboards and alerts query %q", sm.Name, uc.role, job, wantJobs[uc.role]))
					}
					jobs[job] = true
					scraped[uc.role] = true
				}
			}
		}
	}
	for _, role := range []string{"api", "worker"} {
		if !scraped[role] {
			errs = append(errs, fmt.Errorf("no ServiceMonitor scrapes the %s", role))
		}
	}
	// Alerts select series by job: each job they name must be one the ServiceMonitors produce.
	for _, pr := range r.prometheusRules {
		for _, g := range pr.Spec.Groups {
			for _, rule := range g.Rules {
				for _, m := range jobMatcher.FindAllStringSubmatch(rule.Expr.String(), -1) {
					if !jobs[m[1]] {
						errs = append(errs, fmt.Errorf("PrometheusRule %s %s: job %q is not scraped (jobs: %v)", pr.Name, rule.Alert+rule.Record, m[1], jobs))
					}
				}
			}
		}
	}
	return errs
}

// wantJobs are the Prometheus jobs the dashboard and the alerts query (docs/observability.md).
var wantJobs = map[string]string{"api": "upsize-api", "worker": "upsize-worker"}

var jobMatcher = regexp.MustCompile(`\bjob\s*=\s*"([^"]*)"`)

// scrapeJob is the job label Prometheus gives a Service's targets: the Service's name, or the value of its
// jobLabel label, then the endpoint's relabelings that set job to a constant.
func scrapeJob(sm *monv1.ServiceMonitor, ep monv1.Endpoint, s *corev1.Service) (string, error) {
	job := s.Name
	if sm.Spec.JobLabel != "" {
		if v, ok := s.Labels[sm.Spec.JobLabel]; ok {
			job = v
		}
	}
	for _, rc := range ep.RelabelConfigs {
		if rc.TargetLabel != "job" {
			continue
		}
		if len(rc.SourceLabels) > 0 || rc.Replacement == nil || (rc.Action != "" && !strings.EqualFold(rc.Action, "replace")) {
			return "", fmt.Errorf("a job relabeling other than a constant replace: %+v", rc)
		}
		job = *rc.Replacement
	}
	return job, nil
}

// redisURLs: REDIS_URL of every API and worker container. Literal values must carry no password (that
// belongs in a Secret).
func checkRedisURL(r *rendered) []error {
	ucs, errs := r.upsizeContainers()
	for _, uc := range ucs {
		v, ok := uc.env["REDIS_URL"]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: REDIS_URL not set (the default is 127.0.0.1)", uc.w))
			continue
		}
		if v.source == "secret" {
			if v.ref.Optional != nil && *v.ref.Optional {
				errs = append(errs, fmt.Errorf("%s: REDIS_URL from an optional Secret key would fall back to 127.0.0.1", uc.w))
			}
			continue
		}
		u, err := url.Parse(v.value)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: REDIS_URL: %w", uc.w, err))
			continue
		}
		if _, has := u.User.Password(); has {
			errs = append(errs, fmt.Errorf("%s: REDIS_URL carries a password outside a Secret", uc.w))
		}
		if !r.expect.inClusterRedis {
			errs = append(errs, fmt.Errorf("%s: REDIS_URL must come from the Secret where Redis is outside the cluster", uc.w))
		}
	}
	return errs
}

// checkInClusterRedis: where the overlay runs Redis, it is durable (AOF) and never evicts (a task or a
// request state evicted under memory pressure would be lost), and the service points at it; elsewhere no
// Redis runs in the cluster.
func checkInClusterRedis(r *rendered) []error {
	var errs []error
	var redis []*corev1.Container
	var redisSet workload
	for _, w := range r.workloads() {
		for i, c := range w.template.Spec.Containers {
			if strings.HasPrefix(path.Base(c.Image), "redis") || slices.Contains(c.Command, "redis-server") {
				redis = append(redis, &w.template.Spec.Containers[i])
				redisSet = w
			}
		}
	}
	if !r.expect.inClusterRedis {
		if len(redis) > 0 || len(r.statefulSets) > 0 {
			errs = append(errs, fmt.Errorf("a Redis runs in the cluster; this overlay uses one outside"))
		}
		return errs
	}
	if len(redis) != 1 || redisSet.kind != "StatefulSet" {
		return append(errs, fmt.Errorf("want one Redis container in a StatefulSet, found %d", len(redis)))
	}
	c := redis[0]
	args := redisArgs(c)
	if args["appendonly"] != "yes" {
		errs = append(errs, fmt.Errorf("Redis: appendonly %q, want yes", args["appendonly"]))
	}
	if args["maxmemory-policy"] != "noeviction" {
		errs = append(errs, fmt.Errorf("Redis: maxmemory-policy %q, want noeviction", args["maxmemory-policy"]))
	}
	maxmem, err := redisBytes(args["maxmemory"])
	lim := c.Resources.Limits.Memory()
	if err != nil || maxmem <= 0 || lim.IsZero() || maxmem >= lim.Value() {
		errs = append(errs, fmt.Errorf("Redis: maxmemory %q must be set and below the memory limit %s", args["maxmemory"], lim))
	}
	dir := args["dir"]
	mounted := false
	for _, m := range c.VolumeMounts {
		mounted = mounted || (dir != "" && m.MountPath == dir)
	}
	if !mounted {
		errs = append(errs, fmt.Errorf("Redis: data dir %q is not a mounted volume", dir))
	}
	// The service reaches it by its Service.
	for _, uc := range append(r.byRole("api"), r.byRole("worker")...) {
		if err := r.pointsAtRedis(uc.env["REDIS_URL"].value, uc.w.namespace, redisSet); err != nil {
			errs = append(errs, fmt.Errorf("%s: REDIS_URL: %w", uc.w, err))
		}
	}
	return errs
}

// redisArgs reads "--name value" pairs of a redis-server command line.
func redisArgs(c *corev1.Container) map[string]string {
	all := append(slices.Clone(c.Command), c.Args...)
	out := map[string]string{}
	for i := 0; i < len(all); i++ {
		if name, ok := strings.CutPrefix(all[i], "--"); ok && i+1 < len(all) {
			out[name] = all[i+1]
			i++
		}
	}
	return out
}

// redisBytes parses Redis memory units (1gb = 1024^3, 1g = 10^9).
func redisBytes(s string) (int64, error) {
	s = strings.ToLower(s)
	units := []struct {
		suffix string
		mul    int64
	}{{"kb", 1 << 10}, {"mb", 1 << 20}, {"gb", 1 << 30}, {"k", 1e3}, {"m", 1e6}, {"g", 1e9}, {"b", 1}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return v * u.mul, err
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// pointsAtRedis checks that a redis:// URL names a Service of the Redis StatefulSet on its port. Clients
// outside the namespace would need the namespaced name.
func (r *rendered) pointsAtRedis(addr, fromNS string, redis workload) error {
	u, err := url.Parse(addr)
	if err != nil {
		return err
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return fmt.Errorf("%q: want redis:// to the in-cluster Redis", addr)
	}
	host := u.Host
	h, p, err := netSplit(host)
	if err != nil {
		return err
	}
	for _, s := range r.services {
		if !matchMap(s.Spec.Selector, redis.template.Labels) {
			continue
		}
		names := []string{s.Name + "." + s.Namespace + ".svc.cluster.local", s.Name + "." + s.Namespace + ".svc", s.Name + "." + s.Namespace}
		if fromNS == s.Namespace {
			names = append(names, s.Name)
		}
		if !slices.Contains(names, h) {
			continue
		}
		for _, sp := range s.Spec.Ports {
			if strconv.Itoa(int(sp.Port)) == p {
				return nil
			}
		}
		return fmt.Errorf("%q: Service %s has no port %s", addr, s.Name, p)
	}
	return fmt.Errorf("%q does not name a Service of %s reachable from namespace %s", addr, redis, fromNS)
}

func netSplit(hostPort string) (string, string, error) {
	i := strings.LastIndex(hostPort, ":")
	if i < 0 {
		return "", "", fmt.Errorf("%q: no port", hostPort)
	}
	return hostPort[:i], hostPort[i+1:], nil
}

func TestSelectorsMatchPods(t *testing.T)           { forEachOverlay(t, checkSelectors) }
func TestServicesReachContainerPorts(t *testing.T)  { forEachOverlay(t, checkServices) }
func TestDisruptionBudgets(t *testing.T)            { forEachOverlay(t, checkPDBs) }
func TestAutoscalerTargets(t *testing.T)            { forEachOverlay(t, checkAutoscaling) }
func TestEnvNamesAreConfigNames(t *testing.T)       { forEachOverlay(t, checkEnvNames) }
func TestRolesAndPorts(t *testing.T)                { forEachOverlay(t, checkRoles) }
func TestProbesHitServedRoutes(t *testing.T)        { forEachOverlay(t, checkProbes) }
func TestShutdownTiming(t *testing.T)               { forEachOverlay(t, checkShutdownTiming) }
func TestWorkerConcurrencyMatchesCPU(t *testing.T)  { forEachOverlay(t, checkWorkerConcurrency) }
func TestResources(t *testing.T)                    { forEachOverlay(t, checkResources) }
func TestBlobStorage(t *testing.T)                  { forEachOverlay(t, checkBlobVolume) }
func TestObjectStoreCredentials(t *testing.T)       { forEachOverlay(t, checkStoreCredentials) }
func TestReferencesResolve(t *testing.T)            { forEachOverlay(t, checkReferences) }
func TestOneNamespace(t *testing.T)                 { forEachOverlay(t, checkNamespace) }
func TestServiceMonitorsScrapeMetrics(t *testing.T) { forEachOverlay(t, checkServiceMonitors) }
func TestRedisURL(t *testing.T)                     { forEachOverlay(t, checkRedisURL) }
func TestInClusterRedis(t *testing.T)               { forEachOverlay(t, checkInClusterRedis) }

func TestNoContainerRunsAsRoot(t *testing.T) {
	uid := dockerfileUID(t)
	forEachOverlay(t, func(r *rendered) []error { return checkSecurity(r, uid) })
}
