package check

import (
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"upsize/internal/config"
)

// workload is a Deployment or StatefulSet: what selectors, ports and policies are checked against.
type workload struct {
	kind, name, namespace string
	selector              *metav1.LabelSelector
	template              *corev1.PodTemplateSpec
	replicas              *int32
}

func (w workload) String() string { return w.kind + "/" + w.name }

func (r *rendered) workloads() []workload {
	var ws []workload
	for _, d := range r.deployments {
		ws = append(ws, workload{"Deployment", d.Name, d.Namespace, d.Spec.Selector, &d.Spec.Template, d.Spec.Replicas})
	}
	for _, s := range r.statefulSets {
		ws = append(ws, workload{"StatefulSet", s.Name, s.Namespace, s.Spec.Selector, &s.Spec.Template, s.Spec.Replicas})
	}
	return ws
}

// selects reports whether a LabelSelector matches a label set; a malformed selector matches nothing.
func selects(sel *metav1.LabelSelector, l map[string]string) bool {
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false
	}
	return s.Matches(labels.Set(l))
}

// matchMap is a Service-style selector: every pair present; empty selects nothing here (a Service without
// a selector has hand-made endpoints, which these manifests never use).
func matchMap(sel, l map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	return labels.SelectorFromSet(sel).Matches(labels.Set(l))
}

// allContainers is every container of a pod, init containers included.
func allContainers(p *corev1.PodSpec) []corev1.Container {
	return append(slices.Clone(p.InitContainers), p.Containers...)
}

// resolvePort finds the container port a Service targetPort, probe port or policy port names.
func resolvePort(p *corev1.PodSpec, port intstr.IntOrString) (int32, bool) {
	for _, c := range p.Containers {
		for _, cp := range c.Ports {
			if port.Type == intstr.String && cp.Name == port.StrVal {
				return cp.ContainerPort, true
			}
			if port.Type == intstr.Int && cp.ContainerPort == port.IntVal {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

// Roles: which binary of the image a container runs. Dockerfile tests check that the image has them.
const (
	apiBinary    = "/usr/local/bin/upsize-api"
	workerBinary = "/usr/local/bin/upsize-worker"
)

func roleOf(c corev1.Container) string {
	if len(c.Command) == 0 {
		return ""
	}
	switch c.Command[0] {
	case apiBinary:
		return "api"
	case workerBinary:
		return "worker"
	}
	return ""
}

// upsizeContainer is an API or worker container with the settings internal/config reads from its
// environment.
type upsizeContainer struct {
	w    workload
	c    *corev1.Container
	role string
	env  map[string]envValue
	cfg  config.Config
}

type envValue struct {
	value  string
	source string // "literal", "configmap", "secret"
	ref    *corev1.SecretKeySelector
}

// env resolves a container's environment from the rendered ConfigMaps; Secret values are unknown offline
// and stand as empty here (upsizeContainers gives config.Load secretStandIns for some).
func (r *rendered) env(c *corev1.Container) (map[string]envValue, []error) {
	var errs []error
	env := map[string]envValue{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm := r.configMap(ef.ConfigMapRef.Name)
			if cm == nil {
				errs = append(errs, fmt.Errorf("%s: envFrom ConfigMap %s is not rendered", c.Name, ef.ConfigMapRef.Name))
				continue
			}
			for k, v := range cm.Data {
				env[ef.Prefix+k] = envValue{value: v, source: "configmap"}
			}
		case ef.SecretRef != nil:
			errs = append(errs, fmt.Errorf("%s: envFrom Secret %s: its variable names cannot be checked offline; use secretKeyRef",
				c.Name, ef.SecretRef.Name))
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = envValue{value: e.Value, source: "literal"}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm := r.configMap(ref.Name)
			if cm == nil {
				errs = append(errs, fmt.Errorf("%s: env %s: ConfigMap %s is not rendered", c.Name, e.Name, ref.Name))
				continue
			}
			v, ok := cm.Data[ref.Key]
			if !ok && (ref.Optional == nil || !*ref.Optional) {
				errs = append(errs, fmt.Errorf("%s: env %s: ConfigMap %s has no key %s", c.Name, e.Name, ref.Name, ref.Key))
			}
			env[e.Name] = envValue{value: v, source: "configmap"}
		case e.ValueFrom.SecretKeyRef != nil:
			if err := r.secretExists(e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key); err != nil {
				errs = append(errs, fmt.Errorf("%s: env %s: %w", c.Name, e.Name, err))
			}
			env[e.Name] = envValue{source: "secret", ref: e.ValueFrom.SecretKeyRef}
		default:
			errs = append(errs, fmt.Errorf("%s: env %s: only values, ConfigMap and Secret keys are expected", c.Name, e.Name))
		}
	}
	return env, errs
}

func (r *rendered) configMap(name string) *corev1.ConfigMap {
	for _, cm := range r.configMaps {
		if cm.Name == name {
			return cm
		}
	}
	return nil
}

// secretExists: the Secret is rendered with that key, or is one the overlay declares as created out of
// band.
func (r *rendered) secretExists(name, key string) error {
	for _, s := range r.secrets {
		if s.Name == name {
			if _, ok := s.Data[key]; ok {
				return nil
			}
			if _, ok := s.StringData[key]; ok {
				return nil
			}
			return fmt.Errorf("Secret %s has no key %s", name, key)
		}
	}
	if slices.Contains(r.expect.externalSecrets, name) {
		return nil
	}
	return fmt.Errorf("Secret %s is neither rendered nor declared external", name)
}

// imageEnv is the ENV of the Dockerfile's final stage: every container of the image starts with it, and
// the manifests' env overrides it name by name (an empty value clears one).
var imageEnv = sync.OnceValues(func() (map[string]string, error) {
	dt, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		return nil, err
	}
	d, warnings := parseDockerfile(dt)
	if d == nil {
		return nil, fmt.Errorf("Dockerfile: %v", warnings)
	}
	env := map[string]string{}
	for _, c := range d.final().Commands {
		if e, ok := c.(*instructions.EnvCommand); ok {
			for _, kv := range e.Env {
				env[kv.Key] = kv.Value
			}
		}
	}
	return env, nil
})

// secretStandIns take the place of Secret values, unknown offline, where a value being set changes what
// internal/config does (BLOB_URL beside a BLOB_DIR is a start-up error); they have the documented form.
// Other Secret values stand as empty, so that config.Load uses its default.
var secretStandIns = map[string]string{"BLOB_URL": "s3://bucket-from-secret?region=us-east-1"}

// upsizeContainers lists every API and worker container with its resolved configuration. A Deployment
// container that runs neither binary is an error: each Deployment is one of the two roles.
func (r *rendered) upsizeContainers() ([]upsizeContainer, []error) {
	var out []upsizeContainer
	var errs []error
	img, err := imageEnv()
	if err != nil {
		errs = append(errs, err)
	}
	for _, w := range r.workloads() {
		for i := range w.template.Spec.Containers {
			c := &w.template.Spec.Containers[i]
			role := roleOf(*c)
			if role == "" {
				if w.kind == "Deployment" {
					errs = append(errs, fmt.Errorf("%s: container %s runs %v, neither %s nor %s", w, c.Name, c.Command, apiBinary, workerBinary))
				}
				continue
			}
			env, envErrs := r.env(c)
			errs = append(errs, prefixed(w.String(), envErrs)...)
			// What the container's environment is: the image's ENV, under what the manifest sets.
			cfg, err := config.Load(role, func(n string) string {
				if v, ok := env[n]; ok {
					if v.source == "secret" {
						return secretStandIns[n]
					}
					return v.value
				}
				return img[n]
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: internal/config refuses the environment: %w", w, err))
				continue
			}
			out = append(out, upsizeContainer{w: w, c: c, role: role, env: env, cfg: cfg})
		}
	}
	return out, errs
}

func (r *rendered) byRole(role string) []upsizeContainer {
	ucs, _ := r.upsizeContainers()
	var out []upsizeContainer
	for _, uc := range ucs {
		if uc.role == role {
			out = append(out, uc)
		}
	}
	return out
}

// httpPort is the port HTTP_ADDR makes the binary listen on.
func (uc upsizeContainer) httpPort() (int32, error) {
	_, p, err := net.SplitHostPort(uc.cfg.HTTPAddr)
	if err != nil {
		return 0, fmt.Errorf("HTTP_ADDR %q: %w", uc.cfg.HTTPAddr, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("HTTP_ADDR %q: %w", uc.cfg.HTTPAddr, err)
	}
	return int32(n), nil
}

func prefixed(p string, errs []error) []error {
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = fmt.Errorf("%s: %w", p, e)
	}
	return out
}

// preStopSleep is how long a preStop hook delays SIGTERM (an exec of sleep, or the native sleep action).
func preStopSleep(c *corev1.Container) (time.Duration, error) {
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
		return 0, nil
	}
	h := c.Lifecycle.PreStop
	switch {
	case h.Sleep != nil:
		return time.Duration(h.Sleep.Seconds) * time.Second, nil
	case h.Exec != nil && len(h.Exec.Command) == 2 && path.Base(h.Exec.Command[0]) == "sleep":
		n, err := strconv.Atoi(h.Exec.Command[1])
		if err != nil {
			return 0, fmt.Errorf("preStop %v: %w", h.Exec.Command, err)
		}
		return time.Duration(n) * time.Second, nil
	}
	return 0, fmt.Errorf("preStop hook %+v: only a sleep is expected (its length is part of the shutdown chain)", h)
}
