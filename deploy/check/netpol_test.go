package check

import (
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
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
					[]peer{apiPeer, workerPeer}, []peer{outsider, otherNSPod, stranger, prometheus, kedaOperator}})
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

// endpoint is where the API or a worker might open a connection: an in-cluster pod (pod set; ip is its
// address) or an address outside the cluster.
type endpoint struct {
	name  string
	ip    netip.Addr
	pod   *peer
	spec  *corev1.PodSpec // the pod's containers, for named ports
	port  int32
	proto corev1.Protocol
}

func (e endpoint) String() string { return fmt.Sprintf("%s (%s %d)", e.name, e.proto, e.port) }

func at(e endpoint, port int32, proto corev1.Protocol) endpoint {
	e.port, e.proto = port, proto
	return e
}

// Where the egress of the API and the workers is judged. Pod addresses are in kind's pod network; the
// cluster's other pod and service networks are private ranges too. Public addresses stand for the
// internet: an object store (an address of S3's), or anything else on another port.
var (
	kubeDNS = endpoint{name: "kube-dns", ip: netip.MustParseAddr("10.244.0.3"),
		pod: &peer{name: "kube-dns", namespace: "kube-system", nsLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"},
			podLabels: map[string]string{"k8s-app": "kube-dns"}}}
	publicResolver      = endpoint{name: "a public resolver", ip: netip.MustParseAddr("8.8.8.8"), port: 53, proto: corev1.ProtocolUDP}
	publicAddr          = endpoint{name: "a public address", ip: netip.MustParseAddr("52.216.8.1")}
	privateAddr         = endpoint{name: "a private address (VPC)", ip: netip.MustParseAddr("192.168.10.20")}
	managedRedis        = endpoint{name: "the managed Redis (a VPC address)", ip: netip.MustParseAddr("10.0.12.34")}
	podInOtherNS        = endpoint{name: "a pod in another namespace", ip: netip.MustParseAddr("10.244.3.7"), pod: &otherNSPod}
	cloudMetadata       = endpoint{name: "the cloud metadata server", ip: netip.MustParseAddr("169.254.169.254"), port: 80, proto: corev1.ProtocolTCP}
	gkeMetadata         = endpoint{name: "the GKE metadata server", ip: cloudMetadata.ip, port: 80, proto: corev1.ProtocolTCP}
	gkeMetadataDPv2     = endpoint{name: "the GKE metadata server (Dataplane V2)", ip: netip.MustParseAddr("169.254.169.252"), port: 988, proto: corev1.ProtocolTCP}
	eksPodIdentityAgent = endpoint{name: "the EKS Pod Identity Agent", ip: netip.MustParseAddr("169.254.170.23"), port: 80, proto: corev1.ProtocolTCP}
)

// egressAllowed evaluates the rendered NetworkPolicies like a network plugin: a pod no Egress policy
// selects may connect anywhere; a selected pod only where some rule of a selecting policy allows. Whether
// an ipBlock also matches pod addresses is up to the plugin: ipBlocksMatchPods says which answer to take
// (false when proving a pod is reachable, true when proving it is not).
func (r *rendered) egressAllowed(ns string, src map[string]string, dst endpoint, ipBlocksMatchPods bool) bool {
	isolated := false
	for _, np := range r.netpols {
		if np.Namespace != ns || !selects(&np.Spec.PodSelector, src) || !hasEgressType(np) {
			continue
		}
		isolated = true
		for _, rule := range np.Spec.Egress {
			if egressPortsAllow(rule.Ports, dst) && egressPeersAllow(rule.To, np.Namespace, dst, ipBlocksMatchPods) {
				return true
			}
		}
	}
	return !isolated
}

// hasEgressType: policyTypes names Egress, or (left out) the policy has egress rules.
func hasEgressType(np *networkingv1.NetworkPolicy) bool {
	return slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) || (len(np.Spec.PolicyTypes) == 0 && len(np.Spec.Egress) > 0)
}

func egressPortsAllow(ports []networkingv1.NetworkPolicyPort, dst endpoint) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		proto := corev1.ProtocolTCP
		if pp.Protocol != nil {
			proto = *pp.Protocol
		}
		if proto != dst.proto {
			continue
		}
		if pp.Port == nil {
			return true
		}
		n := pp.Port.IntVal
		if pp.Port.Type == intstr.String { // a named port of the destination pod
			if dst.spec == nil {
				continue
			}
			var ok bool
			if n, ok = resolvePort(dst.spec, *pp.Port); !ok {
				continue
			}
		}
		end := n
		if pp.EndPort != nil {
			end = *pp.EndPort
		}
		if dst.port >= n && dst.port <= end {
			return true
		}
	}
	return false
}

func egressPeersAllow(to []networkingv1.NetworkPolicyPeer, policyNS string, dst endpoint, ipBlocksMatchPods bool) bool {
	if len(to) == 0 {
		return true
	}
	for _, t := range to {
		switch {
		case t.IPBlock != nil:
			if (dst.pod == nil || ipBlocksMatchPods) && inIPBlock(t.IPBlock, dst.ip) {
				return true
			}
		case dst.pod == nil:
		case t.NamespaceSelector != nil:
			if selects(t.NamespaceSelector, dst.pod.nsLabels) && (t.PodSelector == nil || selects(t.PodSelector, dst.pod.podLabels)) {
				return true
			}
		case t.PodSelector != nil:
			if dst.pod.namespace == policyNS && selects(t.PodSelector, dst.pod.podLabels) {
				return true
			}
		}
	}
	return false
}

// inIPBlock: the address is in the CIDR and in none of its exceptions; a malformed block matches nothing.
func inIPBlock(b *networkingv1.IPBlock, ip netip.Addr) bool {
	p, err := netip.ParsePrefix(b.CIDR)
	if err != nil || !ip.IsValid() || !p.Contains(ip) {
		return false
	}
	for _, e := range b.Except {
		if x, err := netip.ParsePrefix(e); err != nil || x.Contains(ip) {
			return false
		}
	}
	return true
}

// storePort is the port the object store listens on: 443 (HTTPS), unless a literal BLOB_URL names an
// endpoint with another. A BLOB_URL from a Secret is unknown offline: the default endpoints are HTTPS.
func storePort(ucs []upsizeContainer) int32 {
	for _, uc := range ucs {
		u, err := url.Parse(uc.cfg.BlobURL)
		if uc.env["BLOB_URL"].source == "secret" || err != nil {
			continue
		}
		ep, err := url.Parse(u.Query().Get("endpoint"))
		if err != nil || ep.Host == "" {
			continue
		}
		if p, err := strconv.Atoi(ep.Port()); err == nil {
			return int32(p)
		}
		if ep.Scheme == "http" {
			return 80
		}
	}
	return 443
}

// checkEgress: the API and the workers reach DNS, Redis and where image bytes live, and nothing else: not
// the internet on other ports, not other pods, not the cloud's metadata server (it hands out the node's
// credentials) unless a workload identity component opens the identity endpoint it needs.
func checkEgress(r *rendered) []error {
	if len(r.namespaces) != 1 {
		return []error{fmt.Errorf("want one namespace")}
	}
	ns := r.namespaces[0].Name
	var errs []error
	ucs, _ := r.upsizeContainers()
	var allow, deny []endpoint
	allow = append(allow, at(kubeDNS, 53, corev1.ProtocolUDP), at(kubeDNS, 53, corev1.ProtocolTCP))
	deny = append(deny, publicResolver, at(publicAddr, 80, corev1.ProtocolTCP), at(publicAddr, 22, corev1.ProtocolTCP),
		at(podInOtherNS, 8080, corev1.ProtocolTCP), at(podInOtherNS, 443, corev1.ProtocolTCP),
		at(privateAddr, 443, corev1.ProtocolTCP), at(cloudMetadata, 443, corev1.ProtocolTCP))
	for _, e := range []endpoint{cloudMetadata, gkeMetadataDPv2, eksPodIdentityAgent} {
		if slices.ContainsFunc(r.expect.identityEgress, func(o endpoint) bool { return o.ip == e.ip && o.port == e.port }) {
			continue
		}
		deny = append(deny, e)
	}
	allow = append(allow, r.expect.identityEgress...)
	if r.expect.blobs == blobObjectStore {
		allow = append(allow, at(endpoint{name: "the object store", ip: publicAddr.ip}, storePort(ucs), corev1.ProtocolTCP))
	} else {
		deny = append(deny, at(publicAddr, 443, corev1.ProtocolTCP))
	}
	if r.expect.inClusterRedis {
		for _, w := range r.workloads() {
			if w.kind != "StatefulSet" {
				continue
			}
			redis := endpoint{name: w.String(), ip: netip.MustParseAddr("10.244.0.9"), spec: &w.template.Spec,
				pod: &peer{name: w.String(), namespace: ns, nsLabels: r.namespaceLabels(ns), podLabels: w.template.Labels}}
			stranger := endpoint{name: "other pod in the namespace", ip: netip.MustParseAddr("10.244.0.10"),
				pod: &peer{name: "debug", namespace: ns, nsLabels: r.namespaceLabels(ns), podLabels: map[string]string{"app.kubernetes.io/name": "debug"}}}
			for _, c := range w.template.Spec.Containers {
				for _, cp := range c.Ports {
					allow = append(allow, at(redis, cp.ContainerPort, corev1.ProtocolTCP))
					deny = append(deny, at(stranger, cp.ContainerPort, corev1.ProtocolTCP))
				}
			}
		}
	}
	for _, p := range r.expect.externalRedisPorts {
		allow = append(allow, at(managedRedis, p, corev1.ProtocolTCP))
	}
	for _, role := range []string{"api", "worker"} {
		for _, uc := range r.byRole(role) {
			src := uc.w.template.Labels
			for _, dst := range allow {
				if !r.egressAllowed(ns, src, dst, false) {
					errs = append(errs, fmt.Errorf("egress: the %s cannot reach %s", roleNames[role], dst))
				}
			}
			for _, dst := range deny {
				if r.egressAllowed(ns, src, dst, true) {
					errs = append(errs, fmt.Errorf("egress: the %s can reach %s, which nothing needs", roleNames[role], dst))
				}
			}
		}
	}
	return errs
}

var roleNames = map[string]string{"api": "API", "worker": "worker"}

func TestNetworkPolicies(t *testing.T) { forEachOverlay(t, checkNetworkPolicies) }
func TestEgress(t *testing.T)          { forEachOverlay(t, checkEgress) }
