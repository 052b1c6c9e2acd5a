package check

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Each check must be able to fail: every case breaks one rendered overlay the way a careless edit
// would, and the named check must report it (with the given words), while the unbroken overlay passes.

func (r *rendered) deployment(name string) *appsv1.Deployment {
	for _, d := range r.deployments {
		if d.Name == name {
			return d
		}
	}
	panic("no Deployment " + name)
}

func (r *rendered) container(deployment string) *corev1.Container {
	return &r.deployment(deployment).Spec.Template.Spec.Containers[0]
}

func setEnv(c *corev1.Container, name, value string) {
	for i := range c.Env {
		if c.Env[i].Name == name {
			c.Env[i] = corev1.EnvVar{Name: name, Value: value}
			return
		}
	}
	c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
}

func unsetEnv(c *corev1.Container, name string) {
	c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
}

func envVar(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	panic("no env " + name)
}

// upsizeConfig is the generated name of the ConfigMap upsize-config (kustomize appends a hash).
func upsizeConfig(r *rendered) string {
	for _, cm := range r.configMaps {
		if strings.HasPrefix(cm.Name, "upsize-config") {
			return cm.Name
		}
	}
	panic("no ConfigMap upsize-config")
}

func (r *rendered) service(name string) *corev1.Service {
	for _, s := range r.services {
		if s.Name == name {
			return s
		}
	}
	panic("no Service " + name)
}

func (r *rendered) netpol(name string) *networkingv1.NetworkPolicy {
	for _, n := range r.netpols {
		if n.Name == name {
			return n
		}
	}
	panic("no NetworkPolicy " + name)
}

type mutation struct {
	name    string
	overlay string
	mutate  func(r *rendered)
	check   func(r *rendered) []error
	want    string
}

const api, worker = "upsize-api", "upsize-worker"

var mutations = []mutation{
	{"pod labels drift from selector", "production", func(r *rendered) {
		r.deployment(api).Spec.Template.Labels["app.kubernetes.io/component"] = "apx"
	}, checkSelectors, "does not match its own pod labels"},
	{"selector overlaps another workload", "production", func(r *rendered) {
		delete(r.deployment(api).Spec.Selector.MatchLabels, "app.kubernetes.io/component")
	}, checkSelectors, "also matches the pods of Deployment/upsize-worker"},

	{"Service targetPort misnamed", "production", func(r *rendered) {
		r.service(api).Spec.Ports[0].TargetPort = intstr.FromString("htp")
	}, checkServices, "targetPort htp is not a container port"},
	{"Service selects nothing", "production", func(r *rendered) {
		r.service("upsize-worker-metrics").Spec.Selector["app.kubernetes.io/component"] = "workers"
	}, checkServices, "matches no pods"},
	{"StatefulSet without its headless Service", "single-node", func(r *rendered) {
		r.statefulSets[0].Spec.ServiceName = "redis-x"
	}, checkServices, `serviceName "redis-x"`},

	{"PDB allows no eviction", "production", func(r *rendered) {
		r.pdbs[0].Spec.MaxUnavailable = ptr.To(intstr.FromInt32(0))
	}, checkPDBs, "allows no eviction"},
	{"PDB minAvailable blocks drains", "single-node", func(r *rendered) {
		r.pdbs[0].Spec.MaxUnavailable = nil
		r.pdbs[0].Spec.MinAvailable = ptr.To(intstr.FromInt32(1))
	}, checkPDBs, "blocks every eviction at 1 replicas"},
	{"PDB over two workloads", "production", func(r *rendered) {
		delete(r.pdbs[0].Spec.Selector.MatchLabels, "app.kubernetes.io/component")
	}, checkPDBs, "want exactly one"},
	{"Deployment without PDB", "production", func(r *rendered) {
		r.pdbs = r.pdbs[:1]
	}, checkPDBs, "no PodDisruptionBudget"},

	{"HPA targets a missing Deployment", "production", func(r *rendered) {
		r.hpas[0].Spec.ScaleTargetRef.Name = "upsize-apii"
	}, checkAutoscaling, "target Deployment upsize-apii is not rendered"},
	{"Deployment sets replicas under its autoscaler", "production", func(r *rendered) {
		r.deployment(worker).Spec.Replicas = ptr.To(int32(3))
	}, checkAutoscaling, "sets replicas"},
	{"HPA without CPU", "production", func(r *rendered) {
		r.hpas[0].Spec.Metrics[0].Resource.Name = corev1.ResourceMemory
	}, checkAutoscaling, "no CPU utilisation metric"},
	{"HPA on a Deployment without CPU request", "production", func(r *rendered) {
		delete(r.container(api).Resources.Requests, corev1.ResourceCPU)
	}, checkAutoscaling, "no CPU request"},

	{"misspelt variable", "production", func(r *rendered) {
		setEnv(r.container(worker), "WORKER_CONCURENCY", "2")
	}, checkEnvNames, "WORKER_CONCURENCY is not read by internal/config"},
	{"unknown variable in the ConfigMap", "single-node", func(r *rendered) {
		for _, cm := range r.configMaps {
			if strings.HasPrefix(cm.Name, "upsize-config") {
				cm.Data["REDIS_ADDR"] = "redis:6379"
			}
		}
	}, checkEnvNames, "REDIS_ADDR is not read"},
	{"value internal/config refuses", "production", func(r *rendered) {
		setEnv(r.container(api), "DRAIN_DELAY", "5")
	}, checkEnvNames, "internal/config refuses"},

	{"HTTP_ADDR off the container port", "production", func(r *rendered) {
		setEnv(r.container(api), "HTTP_ADDR", ":8081")
	}, checkRoles, "HTTP_ADDR port 8081 is not a container port"},
	{"Deployment runs something else", "production", func(r *rendered) {
		r.container(worker).Command = []string{"/usr/local/bin/upsize-wrker"}
	}, checkRoles, "0 worker containers"},

	{"readiness on a route nobody serves", "production", func(r *rendered) {
		r.container(api).ReadinessProbe.HTTPGet.Path = "/ready"
	}, checkProbes, "readiness probe path /ready"},
	{"liveness on the wrong port", "production", func(r *rendered) {
		r.container(worker).LivenessProbe.HTTPGet.Port = intstr.FromInt32(8080)
	}, checkProbes, "liveness probe port 8080"},
	{"no readiness probe", "single-node", func(r *rendered) {
		r.container(worker).ReadinessProbe = nil
	}, checkProbes, "no HTTP readiness probe"},

	{"API grace below its drain", "production", func(r *rendered) {
		r.deployment(api).Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To(int64(30))
	}, checkShutdownTiming, "grace 30s <= preStop 5s + DRAIN_DELAY 5s + DRAIN_TIMEOUT 25s"},
	{"API without drain delay", "production", func(r *rendered) {
		setEnv(r.container(api), "DRAIN_DELAY", "0s")
	}, checkShutdownTiming, "DRAIN_DELAY is 0"},
	{"readiness too slow for the drain delay", "production", func(r *rendered) {
		r.container(api).ReadinessProbe.PeriodSeconds = 5
	}, checkShutdownTiming, "readiness needs 10s"},
	{"preStop that is not a sleep", "production", func(r *rendered) {
		r.container(api).Lifecycle.PreStop.Exec.Command = []string{"/bin/sh", "-c", "sleep 5"}
	}, checkShutdownTiming, "only a sleep is expected"},
	{"worker grace below SHUTDOWN_TIMEOUT", "production", func(r *rendered) {
		r.deployment(worker).Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To(int64(50))
	}, checkShutdownTiming, "grace 50s <= SHUTDOWN_TIMEOUT 50s"},
	{"SHUTDOWN_TIMEOUT below the p99 task time", "single-node", func(r *rendered) {
		setEnv(r.container(worker), "SHUTDOWN_TIMEOUT", "20s")
	}, checkShutdownTiming, "<= the p99 task time 30s"},

	{"concurrency above the CPU request", "production", func(r *rendered) {
		setEnv(r.container(worker), "WORKER_CONCURRENCY", "4")
	}, checkWorkerConcurrency, "WORKER_CONCURRENCY 4 x 1 libvips threads != CPU request 2"},
	{"libvips threads not counted", "single-node", func(r *rendered) {
		setEnv(r.container(worker), "VIPS_CONCURRENCY", "2")
	}, checkWorkerConcurrency, "x 2 libvips threads"},
	{"concurrency left to the node's CPU count", "production", func(r *rendered) {
		c := r.container(worker)
		for i, e := range c.Env {
			if e.Name == "WORKER_CONCURRENCY" {
				c.Env = append(c.Env[:i], c.Env[i+1:]...)
				break
			}
		}
	}, checkWorkerConcurrency, "WORKER_CONCURRENCY not set"},
	{"fractional CPU request", "production", func(r *rendered) {
		r.container(worker).Resources.Requests[corev1.ResourceCPU] = resource.MustParse("1500m")
	}, checkWorkerConcurrency, "not whole cores"},

	{"root user", "production", func(r *rendered) {
		r.deployment(api).Spec.Template.Spec.SecurityContext.RunAsUser = ptr.To(int64(0))
	}, checkSecurityWithImageUID, "no non-zero runAsUser"},
	{"runAsNonRoot dropped", "single-node", func(r *rendered) {
		r.statefulSets[0].Spec.Template.Spec.SecurityContext.RunAsNonRoot = nil
	}, checkSecurityWithImageUID, "runAsNonRoot is not true"},
	{"container overrides to root", "production", func(r *rendered) {
		r.container(worker).SecurityContext.RunAsUser = ptr.To(int64(0))
	}, checkSecurityWithImageUID, "no non-zero runAsUser"},
	{"user differs from the image's", "production", func(r *rendered) {
		r.deployment(worker).Spec.Template.Spec.SecurityContext.RunAsUser = ptr.To(int64(1000))
	}, checkSecurityWithImageUID, "the image's user is 10001"},
	{"privilege escalation", "production", func(r *rendered) {
		r.container(api).SecurityContext.AllowPrivilegeEscalation = ptr.To(true)
	}, checkSecurityWithImageUID, "allowPrivilegeEscalation"},

	{"no memory limit", "production", func(r *rendered) {
		delete(r.container(api).Resources.Limits, corev1.ResourceMemory)
	}, checkResources, "no memory limit"},
	{"no CPU request", "single-node", func(r *rendered) {
		delete(r.statefulSets[0].Spec.Template.Spec.Containers[0].Resources.Requests, corev1.ResourceCPU)
	}, checkResources, "no cpu request"},
	{"limit below request", "production", func(r *rendered) {
		r.container(worker).Resources.Limits[corev1.ResourceMemory] = resource.MustParse("1Gi")
	}, checkResources, "memory limit 1Gi below request 2Gi"},

	{"worker mounts blobs elsewhere", "single-node", func(r *rendered) {
		r.container(worker).VolumeMounts[0].MountPath = "/blobs"
	}, checkBlobVolume, "no PersistentVolumeClaim mounted at BLOB_URL's directory"},
	{"blob volume for one pod", "single-node", func(r *rendered) {
		r.pvcs[0].Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}
	}, checkBlobVolume, "want ReadWriteOnce"},
	{"blob claims differ", "single-node", func(r *rendered) {
		for i := range r.deployment(worker).Spec.Template.Spec.Volumes {
			if v := &r.deployment(worker).Spec.Template.Spec.Volumes[i]; v.PersistentVolumeClaim != nil {
				v.PersistentVolumeClaim.ClaimName = "other"
			}
		}
	}, checkBlobVolume, "want one shared claim"},
	{"single-node BLOB_URL left to the default", "single-node", func(r *rendered) {
		delete(r.configMap(upsizeConfig(r)).Data, "BLOB_URL")
	}, checkBlobVolume, "BLOB_URL not set"},
	{"production mounts a ReadWriteMany claim", "production", func(r *rendered) {
		pvc := mustLoad("single-node").pvcs[0]
		pvc.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}
		r.pvcs = append(r.pvcs, pvc)
		spec := &r.deployment(worker).Spec.Template.Spec
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "blobs", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc.Name}}})
		spec.Containers[0].VolumeMounts = append(spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "blobs", MountPath: "/var/lib/upsize/blobs"})
	}, checkBlobVolume, "mounts PersistentVolumeClaim upsize-blobs at /var/lib/upsize/blobs"},
	{"production renders a claim", "production-sentinel", func(r *rendered) {
		r.pvcs = mustLoad("single-node").pvcs
	}, checkBlobVolume, "PersistentVolumeClaim upsize-blobs [ReadWriteOnce] rendered"},
	{"production BLOB_URL on a file://", "production", func(r *rendered) {
		setEnv(r.container(api), "BLOB_URL", "file:///var/lib/upsize/blobs")
		setEnv(r.container(worker), "BLOB_URL", "file:///var/lib/upsize/blobs")
	}, checkBlobVolume, "BLOB_URL file:///var/lib/upsize/blobs is not an object store"},
	{"production BLOB_URL on a per-pod memory store", "production", func(r *rendered) {
		setEnv(r.container(api), "BLOB_URL", "mem://")
	}, checkBlobVolume, "BLOB_URL mem:// is not an object store"},
	{"production BLOB_URL left to the default", "production", func(r *rendered) {
		unsetEnv(r.container(worker), "BLOB_URL")
	}, checkBlobVolume, "BLOB_URL not set"},
	{"optional BLOB_URL Secret", "production", func(r *rendered) {
		envVar(r.container(api), "BLOB_URL").ValueFrom.SecretKeyRef.Optional = ptr.To(true)
	}, checkBlobVolume, "BLOB_URL from an optional Secret key"},
	{"API and workers on different stores", "production", func(r *rendered) {
		envVar(r.container(worker), "BLOB_URL").ValueFrom.SecretKeyRef.Key = "blob-url-2"
	}, checkBlobVolume, "different BLOB_URLs"},
	{"the older BLOB_DIR beside BLOB_URL", "production", func(r *rendered) {
		setEnv(r.container(api), "BLOB_DIR", "/var/lib/upsize/blobs")
	}, checkEnvNames, "BLOB_URL and BLOB_DIR both set"},

	{"AWS key as a literal", "production", func(r *rendered) {
		setEnv(r.container(api), "AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
	}, checkStoreCredentials, "AWS_SECRET_ACCESS_KEY from a literal: credentials must come from a Secret"},
	{"AWS keys required", "production", func(r *rendered) {
		envVar(r.container(worker), "AWS_ACCESS_KEY_ID").ValueFrom.SecretKeyRef.Optional = nil
	}, checkStoreCredentials, "AWS_ACCESS_KEY_ID from a required Secret key"},
	{"AWS key without its secret", "production", func(r *rendered) {
		unsetEnv(r.container(worker), "AWS_SECRET_ACCESS_KEY")
	}, checkStoreCredentials, "come together"},
	{"workers under another ServiceAccount", "production", func(r *rendered) {
		r.deployment(worker).Spec.Template.Spec.ServiceAccountName = "default"
	}, checkStoreCredentials, "want one of their own"},
	{"AWS variable misspelt", "production", func(r *rendered) {
		envVar(r.container(api), "AWS_SECRET_ACCESS_KEY").Name = "AWS_SECRET_KEY"
	}, checkEnvNames, "AWS_SECRET_KEY is not read"},
	{"ServiceAccount not rendered", "production", func(r *rendered) {
		r.serviceAccounts = nil
	}, checkReferences, "ServiceAccount upsize not rendered"},

	{"ConfigMap reference dangles", "production", func(r *rendered) {
		r.container(api).EnvFrom[0].ConfigMapRef.Name = "upsize-config"
	}, checkReferences, "envFrom ConfigMap upsize-config is not rendered"},
	{"Secret neither rendered nor external", "production", func(r *rendered) {
		r.expect.externalSecrets = nil
	}, checkReferences, "Secret upsize-secrets is neither rendered nor declared external"},

	{"object outside the namespace", "production", func(r *rendered) {
		r.service(api).Namespace = "default"
	}, checkNamespace, `Service upsize-api: namespace "default"`},

	{"ServiceMonitor on a missing port", "production", func(r *rendered) {
		r.serviceMonitors[0].Spec.Endpoints[0].Port = "web"
	}, checkServiceMonitors, "has no port named web"},
	{"ServiceMonitor path", "production", func(r *rendered) {
		r.serviceMonitors[1].Spec.Endpoints[0].Path = "/metric"
	}, checkServiceMonitors, `path "/metric"`},
	{"workers not scraped", "production", func(r *rendered) {
		r.serviceMonitors = r.serviceMonitors[:1]
	}, checkServiceMonitors, "no ServiceMonitor scrapes the worker"},
	{"metrics Service on the wrong container port", "single-node", func(r *rendered) {
		r.container(worker).Ports = append(r.container(worker).Ports, corev1.ContainerPort{Name: "other", ContainerPort: 9100})
		r.service("upsize-worker-metrics").Spec.Ports[0].TargetPort = intstr.FromString("other")
	}, checkServiceMonitors, "/metrics is on 9090"},

	{"workers scraped under the Service's name", "production", func(r *rendered) {
		r.serviceMonitors[1].Spec.Endpoints[0].RelabelConfigs = nil
	}, checkServiceMonitors, `scraped as job "upsize-worker-metrics"`},
	{"alert on a job nobody scrapes", "production", func(r *rendered) {
		pr := &monv1.PrometheusRule{}
		pr.Name = "upsize"
		pr.Spec.Groups = []monv1.RuleGroup{{Name: "g", Rules: []monv1.Rule{{
			Alert: "NoWorker", Expr: intstr.FromString(`sum(up{job="upsize-workers"}) == 0`)}}}}
		r.prometheusRules = append(r.prometheusRules, pr)
	}, checkServiceMonitors, `NoWorker: job "upsize-workers" is not scraped`},

	{"password in a literal REDIS_URL", "single-node", func(r *rendered) {
		setEnv(r.container(api), "REDIS_URL", "redis://:hunter2@redis:6379/0")
	}, checkRedisURL, "carries a password outside a Secret"},
	{"optional REDIS_URL Secret", "production", func(r *rendered) {
		for _, e := range r.container(worker).Env {
			if e.Name == "REDIS_URL" {
				e.ValueFrom.SecretKeyRef.Optional = ptr.To(true)
			}
		}
	}, checkRedisURL, "optional Secret key would fall back"},
	{"production REDIS_URL as a literal", "production", func(r *rendered) {
		setEnv(r.container(worker), "REDIS_URL", "redis://redis.example.com:6379/0")
	}, checkRedisURL, "must come from the Secret"},

	{"Redis without AOF", "single-node", func(r *rendered) {
		setRedisArg(r, "appendonly", "no")
	}, checkInClusterRedis, `appendonly "no"`},
	{"Redis that evicts", "single-node", func(r *rendered) {
		setRedisArg(r, "maxmemory-policy", "allkeys-lru")
	}, checkInClusterRedis, `maxmemory-policy "allkeys-lru"`},
	{"Redis maxmemory above its limit", "single-node", func(r *rendered) {
		setRedisArg(r, "maxmemory", "3gb")
	}, checkInClusterRedis, "below the memory limit"},
	{"service pointed at another Redis", "single-node", func(r *rendered) {
		setEnv(r.container(worker), "REDIS_URL", "redis://redis-x:6379/0")
	}, checkInClusterRedis, "does not name a Service"},
	{"Redis in the production cluster", "production", func(r *rendered) {
		r.statefulSets = mustLoad("single-node").statefulSets
	}, checkInClusterRedis, "a Redis runs in the cluster"},

	{"scale to zero", "production", func(r *rendered) {
		r.scaledObjects[0].Spec.MinReplicaCount = ptr.To(int32(0))
	}, checkScaledObjects, "minReplicaCount must be at least 1"},
	{"idle workers scaled to zero", "production", func(r *rendered) {
		r.scaledObjects[0].Spec.IdleReplicaCount = ptr.To(int32(0))
	}, checkScaledObjects, "idleReplicaCount would scale workers to zero"},
	{"query on a metric that does not exist", "production", func(r *rendered) {
		setQuery(r, strings.Replace(query(r), "upsize_backlog_work_seconds", "upsize_backlog_seconds", 1))
	}, checkScaledObjects, "upsize_backlog_seconds is not a metric of internal/metrics"},
	{"query that does not parse", "single-node", func(r *rendered) {
		setQuery(r, strings.TrimSuffix(query(r), ")"))
	}, checkScaledObjects, "unclosed left parenthesis"},
	{"query on the workers' job", "production", func(r *rendered) {
		setQuery(r, strings.Replace(query(r), `job="upsize-api"`, `job="upsize-worker"`, 1))
	}, checkScaledObjects, `want job= one of ["upsize-api"]`},
	{"query counts each API replica", "production", func(r *rendered) {
		setQuery(r, strings.Replace(query(r), "sum(max by (queue) (", "sum(sum by (queue) (", 1))
	}, checkScaledObjects, "would be counted once per replica"},
	{"query that never comes back empty", "production", func(r *rendered) {
		setQuery(r, query(r)+" or vector(0)")
	}, checkScaledObjects, "`or` a constant turns an empty result"},
	{"query per queue", "production", func(r *rendered) {
		setQuery(r, strings.Replace(query(r), "sum(max by (queue) (", "max by (queue) ((", 1))
	}, checkScaledObjects, "may return several series"},
	{"query of another namespace", "production-sentinel", func(r *rendered) {
		r.scaledObjects[0].Namespace = "upsize-staging"
	}, checkScaledObjects, `want namespace="upsize-staging"`},
	{"the old task-count trigger", "production", func(r *rendered) {
		r.scaledObjects[0].Spec.Triggers[0].Type = "redis"
	}, checkScaledObjects, "want one prometheus trigger"},
	{"trigger setting misspelt", "production", func(r *rendered) {
		md := r.scaledObjects[0].Spec.Triggers[0].Metadata
		md["ignoreNullValue"] = md["ignoreNullValues"]
		delete(md, "ignoreNullValues")
	}, checkScaledObjects, "metadata ignoreNullValue is not a setting"},
	{"an empty result read as no backlog", "single-node", func(r *rendered) {
		r.scaledObjects[0].Spec.Triggers[0].Metadata["ignoreNullValues"] = "true"
	}, checkScaledObjects, `ignoreNullValues "true"`},
	{"no fallback", "production", func(r *rendered) {
		r.scaledObjects[0].Spec.Fallback = nil
	}, checkScaledObjects, "no fallback"},
	{"fallback that shrinks a busy fleet", "production", func(r *rendered) {
		r.scaledObjects[0].Spec.Fallback.Behavior = "static"
	}, checkScaledObjects, `fallback behavior "static"`},
	{"fallback above the single node's workers", "single-node", func(r *rendered) {
		r.scaledObjects[0].Spec.Fallback.Replicas = 5
	}, checkScaledObjects, "fallback replicas 5 outside"},
	{"threshold below a worker's own work", "production", func(r *rendered) {
		r.scaledObjects[0].Spec.Triggers[0].Metadata["threshold"] = "10"
	}, checkScaledObjects, "a busy worker with nothing queued would start another"},
	{"threshold past the wait deadline", "single-node", func(r *rendered) {
		r.scaledObjects[0].Spec.Triggers[0].Metadata["threshold"] = "90"
	}, checkScaledObjects, "longer than UPSIZE_WAIT_TIMEOUT 1m0s"},
	{"Prometheus by a short name", "single-node", func(r *rendered) {
		r.scaledObjects[0].Spec.Triggers[0].Metadata["serverAddress"] = "http://prometheus-operated:9090"
	}, checkScaledObjects, `cannot resolve "prometheus-operated"`},
	{"a Prometheus that does not scrape the workers", "production", func(r *rendered) {
		r.scaledObjects[0].Spec.Triggers[0].Metadata["serverAddress"] = "http://prometheus-operated.observability.svc:9090"
	}, checkScaledObjects, "only from namespace monitoring"},
	{"TriggerAuthentication left over", "production", func(r *rendered) {
		ta := &kedav1alpha1.TriggerAuthentication{}
		ta.Name, ta.Namespace = "upsize-redis", r.scaledObjects[0].Namespace
		r.triggerAuths = append(r.triggerAuths, ta)
	}, checkScaledObjects, "TriggerAuthentication upsize-redis is referenced by no trigger"},
	{"trigger auth missing", "production", func(r *rendered) {
		r.scaledObjects[0].Spec.Triggers[0].AuthenticationRef = &kedav1alpha1.AuthenticationRef{Name: "prometheus-auth"}
	}, checkScaledObjects, "TriggerAuthentication prometheus-auth not rendered"},

	{"backlog bound lowered under its alert", "single-node", func(r *rendered) {
		r.configMap(upsizeConfig(r)).Data["QUEUE_MAX_BACKLOG_SECONDS"] = "3000"
	}, checkBacklogAlert, "QUEUE_MAX_BACKLOG_SECONDS is 3000s: it must warn before the 429s"},

	{"no default deny", "production", func(r *rendered) {
		r.netpols = slices.DeleteFunc(r.netpols, func(n *networkingv1.NetworkPolicy) bool { return n.Name == "default-deny-ingress" })
	}, checkNetworkPolicies, "undeclared pod (port 8080) is reachable from outside client"},
	{"workers open to all", "production", func(r *rendered) {
		r.netpol("upsize-worker-ingress").Spec.Ingress[0].From = nil
	}, checkNetworkPolicies, "worker /metrics (port 9090) is reachable from outside client"},
	{"Prometheus cannot scrape workers", "production", func(r *rendered) {
		r.netpol("upsize-worker-ingress").Spec.Ingress[0].Ports[0].Port = ptr.To(intstr.FromInt32(8080))
	}, checkNetworkPolicies, "worker /metrics (port 9090) is not reachable from Prometheus"},
	{"API closed", "production", func(r *rendered) {
		r.netpol("upsize-api-ingress").Spec.PodSelector.MatchLabels["app.kubernetes.io/component"] = "apx"
	}, checkNetworkPolicies, "API (port 8080) is not reachable from outside client"},
	{"KEDA let into Redis again", "single-node", func(r *rendered) {
		in := &r.netpol("redis-ingress").Spec.Ingress[0]
		in.From = append(in.From, networkingv1.NetworkPolicyPeer{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "keda"}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "keda-operator"}},
		})
	}, checkNetworkPolicies, "is reachable from KEDA operator"},
	{"Redis open to the namespace", "single-node", func(r *rendered) {
		r.netpol("redis-ingress").Spec.Ingress[0].From[0].PodSelector.MatchExpressions = nil
	}, checkNetworkPolicies, "is reachable from other pod in the namespace"},

	{"no egress to the object store", "production", func(r *rendered) {
		r.netpols = slices.DeleteFunc(r.netpols, func(n *networkingv1.NetworkPolicy) bool { return n.Name == "upsize-egress-blob-store" })
	}, checkEgress, "the worker cannot reach the object store (TCP 443)"},
	{"store egress on the wrong port", "production-sentinel", func(r *rendered) {
		r.netpol("upsize-egress-blob-store").Spec.Egress[0].Ports[0].Port = ptr.To(intstr.FromInt32(9000))
	}, checkEgress, "the API cannot reach the object store (TCP 443)"},
	{"store egress into the cluster", "production", func(r *rendered) {
		r.netpol("upsize-egress-blob-store").Spec.Egress[0].To[0].IPBlock.Except = nil
	}, checkEgress, "can reach a pod in another namespace (TCP 443)"},
	{"store egress on every port", "production", func(r *rendered) {
		r.netpol("upsize-egress-blob-store").Spec.Egress[0].Ports = nil
	}, checkEgress, "can reach a public address (TCP 80)"},
	{"store egress to link-local metadata", "production", func(r *rendered) {
		b := r.netpol("upsize-egress-blob-store").Spec.Egress[0].To[0].IPBlock
		b.Except = slices.DeleteFunc(b.Except, func(c string) bool { return c == "169.254.0.0/16" })
	}, checkEgress, "can reach the cloud metadata server (TCP 443)"},
	{"egress left open", "production", func(r *rendered) {
		r.netpols = slices.DeleteFunc(r.netpols, func(n *networkingv1.NetworkPolicy) bool { return hasEgressType(n) })
	}, checkEgress, "can reach a public address (TCP 22)"},
	{"no DNS", "single-node", func(r *rendered) {
		r.netpol("upsize-egress").Spec.Egress[0].To[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] = "dns"
	}, checkEgress, "cannot reach kube-dns (UDP 53)"},
	{"DNS to any resolver", "production", func(r *rendered) {
		r.netpol("upsize-egress").Spec.Egress[0].To = nil
	}, checkEgress, "can reach a public resolver (UDP 53)"},
	{"no egress to the in-cluster Redis", "single-node", func(r *rendered) {
		r.netpols = slices.DeleteFunc(r.netpols, func(n *networkingv1.NetworkPolicy) bool { return n.Name == "upsize-egress-redis" })
	}, checkEgress, "cannot reach StatefulSet/redis (TCP 6379)"},
	{"single-node egress to the internet", "single-node", func(r *rendered) {
		r.netpols = append(r.netpols, mustLoad("production").netpol("upsize-egress-blob-store"))
	}, checkEgress, "can reach a public address (TCP 443)"},
	{"no egress to the Sentinels", "production-sentinel", func(r *rendered) {
		r.netpol("upsize-egress-redis").Spec.Egress[0].Ports = r.netpol("upsize-egress-redis").Spec.Egress[0].Ports[:2]
	}, checkEgress, "cannot reach the managed Redis (a VPC address) (TCP 26379)"},
	{"GKE metadata egress missing", "production+gke-metadata-egress", func(r *rendered) {
		r.netpols = slices.DeleteFunc(r.netpols, func(n *networkingv1.NetworkPolicy) bool { return n.Name == "upsize-egress-gke-metadata" })
	}, checkEgress, "cannot reach the GKE metadata server (TCP 80)"},
	{"EKS Pod Identity egress opens the instance metadata", "production+eks-pod-identity-egress", func(r *rendered) {
		r.netpol("upsize-egress-eks-pod-identity").Spec.Egress[0].To[0].IPBlock.CIDR = "169.254.0.0/16"
	}, checkEgress, "can reach the cloud metadata server (TCP 80)"},
}

func query(r *rendered) string { return r.scaledObjects[0].Spec.Triggers[0].Metadata["query"] }

func setQuery(r *rendered, q string) { r.scaledObjects[0].Spec.Triggers[0].Metadata["query"] = q }

// mustLoad is load for mutations, which have no *testing.T; the overlay rendered in other tests already.
func mustLoad(name string) *rendered {
	docs, err := renderOverlay(name)
	if err != nil {
		panic(err)
	}
	r, err := decode(name, docs)
	if err != nil {
		panic(err)
	}
	return r
}

func setRedisArg(r *rendered, name, value string) {
	c := &r.statefulSets[0].Spec.Template.Spec.Containers[0]
	for i := range c.Args {
		if c.Args[i] == "--"+name {
			c.Args[i+1] = value
			return
		}
	}
	panic("no redis arg " + name)
}

var imageUID int64 = -1

func checkSecurityWithImageUID(r *rendered) []error { return checkSecurity(r, imageUID) }

func TestChecksCatchBrokenManifests(t *testing.T) {
	imageUID = dockerfileUID(t)
	for _, m := range mutations {
		t.Run(m.name, func(t *testing.T) {
			for _, err := range m.check(load(t, m.overlay)) {
				t.Fatalf("the unbroken %s already fails: %v", m.overlay, err)
			}
			r := load(t, m.overlay)
			m.mutate(r)
			errs := m.check(r)
			for _, err := range errs {
				if strings.Contains(err.Error(), m.want) {
					return
				}
			}
			t.Errorf("want an error containing %q, got %v", m.want, errs)
		})
	}
}

func TestDockerfileChecksCatchFaults(t *testing.T) {
	orig := string(readDockerfile(t))
	cases := []struct{ name, from, to, want string }{
		{"root user", "USER 10001:10001", "USER root", `USER "root"`},
		{"uid only", "USER 10001:10001", "USER 10001", `USER "10001"`},
		{"shell-form CMD", `CMD ["/usr/local/bin/upsize-api"]`, `CMD /usr/local/bin/upsize-api`, "shell form"},
		{"CMD of a missing binary", `CMD ["/usr/local/bin/upsize-api"]`, `CMD ["/usr/local/bin/api"]`, "does not hold"},
		{"final stage on trixie", "FROM debian:bookworm-slim", "FROM debian:trixie-slim", "not Debian bookworm"},
		{"final stage is the build stage", "FROM debian:bookworm-slim", "FROM build", "want debian:bookworm-slim"},
		{"compiler in the final stage", "ca-certificates libvips42", "ca-certificates libvips42 gcc", "installs gcc"},
		{"-dev package in the final stage", "ca-certificates libvips42", "ca-certificates libvips-dev", "installs libvips-dev"},
		{"golang in the final stage", "ca-certificates libvips42", "ca-certificates libvips42 golang-go", "installs golang-go"},
		{"apt lists kept", "    && rm -rf /var/lib/apt/lists/* \\\n    && mkdir", "    && mkdir", "apt lists stay"},
		{"recommends installed", "install -y --no-install-recommends ca-certificates", "install -y ca-certificates", "recommended packages"},
		{"no MALLOC_ARENA_MAX", "ENV MALLOC_ARENA_MAX=2 \\\n    BLOB_URL", "ENV BLOB_URL", "MALLOC_ARENA_MAX"},
		{"unknown ENV", "BLOB_URL=file:///var/lib/upsize/blobs", "BLOBS_URL=file:///var/lib/upsize/blobs", "ENV BLOBS_URL"},
		{"worker not copied", "/out/upsize-api /out/upsize-worker /usr/local/bin/", "/out/upsize-api /usr/local/bin/", "no /usr/local/bin/upsize-worker"},
		{"worker not built", "-o /out/upsize-worker ./cmd/worker", "-o /out/upsize-worker ./cmd/api", "no build stage RUN builds ./cmd/worker"},
		{"Go toolchain copied", "COPY --from=build /out/upsize-api", "COPY --from=build /usr/local/go /usr/local/go\nCOPY --from=build /out/upsize-api", "toolchain files"},
		{"worker port not exposed", "EXPOSE 8080 9090", "EXPOSE 8080", "lacks the worker port 9090"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(orig, c.from) {
				t.Fatalf("Dockerfile no longer contains %q; update this case", c.from)
			}
			d, warnings := parseDockerfile([]byte(strings.Replace(orig, c.from, c.to, 1)))
			if d == nil {
				t.Fatalf("unparsable: %v", warnings)
			}
			errs := checkDockerfile(d)
			for _, err := range errs {
				if strings.Contains(err.Error(), c.want) {
					return
				}
			}
			t.Errorf("want an error containing %q, got %v", c.want, errs)
		})
	}
}

func TestDockerignoreChecksCatchFaults(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	d := loadDockerfile(t)
	inputs := buildInputs(t)
	cases := []struct{ name, edit, want string }{
		{"embedded file excluded", string(orig) + "**/*.yaml\n", "internal/httpapi/openapi.yaml: needed by the build, excluded"},
		{"C source excluded", string(orig) + "**/*.c\n", ".c: needed by the build, excluded"},
		{"everything let in", strings.Replace(string(orig), "\n*\n", "\n", 1), ".git/config reaches the build context"},
	}
	for _, c := range cases {
		errs := checkDockerignore(d, []byte(c.edit), inputs)
		found := false
		for _, err := range errs {
			found = found || strings.Contains(err.Error(), c.want)
		}
		if !found {
			t.Errorf("%s: want an error containing %q, got %v", c.name, c.want, errs)
		}
	}
	// A build input outside every COPY (a new top-level directory) is caught too.
	errs := checkDockerignore(d, orig, append(inputs, "pkg/extra/extra.go"))
	if len(errs) == 0 || !strings.Contains(errs[len(errs)-1].Error(), "copied by no COPY") {
		t.Errorf("pkg/extra/extra.go outside every COPY: got %v", errs)
	}
}

func TestDocsChecksCatchOmissions(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	rs := []*rendered{load(t, "production-sentinel"), load(t, "production+gke-metadata-egress")}
	for _, drop := range []string{"redis-url", "deploy/k8s/overlays/production-sentinel", "blob-url", "aws-secret-access-key",
		"components/gke-metadata-egress", "http://prometheus-operated.monitoring.svc.cluster.local:9090"} {
		errs := checkDocs(strings.ReplaceAll(string(doc), drop, "(removed)"), rs)
		found := false
		for _, err := range errs {
			found = found || strings.Contains(err.Error(), drop)
		}
		if !found {
			t.Errorf("docs without %s: got %v", drop, errs)
		}
	}
}
