package check

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// peer is a would-be client of a pod.
type peer struct {
	name      string
	external  bool // outside the cluster (a client, a load balancer)
	namespace string
	nsLabels  map[string]string
	podLabels map[string]string
}

func nsPeer(name, ns string, pod map[string]string) peer {
	return peer{name: name, namespace: ns, nsLabels: map[string]string{"kubernetes.io/metadata.name": ns}, podLabels: pod}
}

// The clients the policies are judged against. Prometheus and KEDA are where their usual charts put
// them (namespaces monitoring and keda); docs/deploy.md says to adjust the policies if yours differ.
var (
	outsider     = peer{name: "outside client", external: true}
	prometheus   = nsPeer("Prometheus", "monitoring", map[string]string{"app.kubernetes.io/name": "prometheus"})
	kedaOperator = nsPeer("KEDA operator", "keda", map[string]string{"app.kubernetes.io/name": "keda-operator", "app": "keda-operator"})
	otherNSPod   = nsPeer("pod in another namespace", "default", map[string]string{"run": "curl"})
)

// ingressAllowed evaluates the rendered NetworkPolicies like a network plugin: a pod no Ingress policy
// selects accepts everything; a selected pod accepts what some rule of a selecting policy allows.
// ipBlock peers are taken as outside addresses only.
func (r *rendered) ingressAllowed(ns string, target map[string]string, pod *corev1.PodSpec, port int32, p peer) bool {
	isolated := false
	nsLabels := r.namespaceLabels(ns)
	for _, np := range r.netpols {
		if np.Namespace != ns || !selects(&np.Spec.PodSelector, target) || !hasIngressType(np) {
			continue
		}
		isolated = true
		for _, rule := range np.Spec.Ingress {
			if portsAllow(rule.Ports, pod, port) && peersAllow(rule.From, np.Namespace, nsLabels, p) {
				return true
			}
		}
	}
	return !isolated
}

func hasIngressType(np *networkingv1.NetworkPolicy) bool {
	return len(np.Spec.PolicyTypes) == 0 || slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
}

func (r *rendered) namespaceLabels(ns string) map[string]string {
	l := map[string]string{"kubernetes.io/metadata.name": ns} // set by the API server on every namespace
	for _, n := range r.namespaces {
		if n.Name == ns {
			maps.Copy(l, n.Labels)
		}
	}
	return l
}

func portsAllow(ports []networkingv1.NetworkPolicyPort, pod *corev1.PodSpec, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		if pp.Protocol != nil && *pp.Protocol != corev1.ProtocolTCP {
			continue
		}
		if pp.Port == nil {
			return true
		}
		n := pp.Port.IntVal
		if pp.Port.Type == intstr.String {
			var ok bool
			if n, ok = resolvePort(pod, *pp.Port); !ok {
				continue
			}
		}
		end := n
		if pp.EndPort != nil {
			end = *pp.EndPort
		}
		if port >= n && port <= end {
			return true
		}
	}
	return false
}

// peersAllow: the rule's namespace is the policy's, whose labels are policyNSLabels.
func peersAllow(from []networkingv1.NetworkPolicyPeer, policyNS string, policyNSLabels map[string]string, p peer) bool {
	if len(from) == 0 {
		return true
	}
	for _, f := range from {
		switch {
		case f.IPBlock != nil:
			if p.external && f.IPBlock.CIDR == "0.0.0.0/0" && len(f.IPBlock.Except) == 0 {
				return true
			}
		case p.external:
		case f.NamespaceSelector != nil:
			if selects(f.NamespaceSelector, p.nsLabels) && (f.PodSelector == nil || selects(f.PodSelector, p.podLabels)) {
				return true
			}
		case f.PodSelector != nil:
			if p.namespace == policyNS && selects(f.PodSelector, p.podLabels) {
				return true
			}
		}
	}
	return false
}

func checkNetworkPolicies(r *rendered) []error {
	var errs []error
	if len(r.namespaces) != 1 {
		return []error{fmt.Errorf("want one namespace")}
	}
	ns := r.namespaces[0].Name
	for _, np := range r.netpols {
		hit := len(np.Spec.PodSelector.MatchLabels) == 0 && len(np.Spec.PodSelector.MatchExpressions) == 0
		for _, w := range r.workloads() {
			hit = hit || selects(&np.Spec.PodSelector, w.template.Labels)
		}
		if !hit {
			errs = append(errs, fmt.Errorf("NetworkPolicy %s selects no pod", np.Name))
		}
	}
	apis, workers := r.byRole("api"), r.byRole("worker")
	if len(apis) != 1 || len(workers) != 1 {
		return append(errs, fmt.Errorf("want one API and one worker"))
	}
	api, worker := apis[0], workers[0]
	apiPeer := nsPeer("API pod", ns, api.w.template.Labels)
	workerPeer := nsPeer("worker pod", ns, worker.w.template.Labels)
	stranger := nsPeer("other pod in the namespace", ns, map[string]string{"app.kubernetes.io/name": "debug"})

	type target struct {
		name   string
		labels map[string]string
		pod    *corev1.PodSpec
		port   int32
		allow  []peer
		deny   []peer
	}
	apiPort, _ := api.httpPort()
	workerPort, _ := worker.httpPort()
	targets := []target{
		{"API", api.w.template.Labels, &api.w.template.Spec, apiPort,
			[]peer{outsider, prometheus, otherNSPod, stranger}, nil},
		{"worker /metrics", worker.w.template.Labels, &worker.w.template.Spec, workerPort,
			[]peer{prometheus}, []peer{outsider, otherNSPod, stranger, apiPeer, kedaOperator}},
		// A pod nobody declared: the namespace's default must be deny.
		{"undeclared pod", stranger.podLabels, &corev1.PodSpec{}, 8080,
			nil, []peer{outsider, otherNSPod, apiPeer, prometheus}},
	}
	for _, w := range r.workloads() {
		if w.kind != "StatefulSet" {
			continue
		}
		for _, c := range w.template.Spec.Containers {
			for _, cp := range c.Ports {
				targets = append(targets, target{w.String() + " port " + cp.Name, w.template.Labels, &w.template.Spec, cp.ContainerPort,
					[]peer{apiPeer, workerPeer, kedaOperator}, []peer{outsider, otherNSPod, stranger, prometheus}})
			}
		}
	}
	for _, tg := range targets {
		for _, p := range tg.allow {
			if !r.ingressAllowed(ns, tg.labels, tg.pod, tg.port, p) {
				errs = append(errs, fmt.Errorf("%s (port %d) is not reachable from %s", tg.name, tg.port, p.name))
			}
		}
		for _, p := range tg.deny {
			if r.ingressAllowed(ns, tg.labels, tg.pod, tg.port, p) {
				errs = append(errs, fmt.Errorf("%s (port %d) is reachable from %s", tg.name, tg.port, p.name))
			}
		}
	}
	return errs
}

func TestNetworkPolicies(t *testing.T) { forEachOverlay(t, checkNetworkPolicies) }
