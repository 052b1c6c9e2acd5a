package check

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// repoRoot is the service's repository (this module lives in deploy/check).
const repoRoot = "../.."

var overlaysDir = filepath.Join(repoRoot, "deploy", "k8s", "overlays")

// expectation is what an overlay promises beyond what every overlay must satisfy. Every directory under
// deploy/k8s/overlays needs an entry, so that a new overlay is checked on purpose.
type expectation struct {
	inClusterRedis bool // a Redis StatefulSet in the overlay (else REDIS_URL comes from a Secret)
	blobs          blobStorage
	// externalRedisPorts: the ports of a Redis outside the cluster (managed, or Sentinels) the API and the
	// workers' egress must reach.
	externalRedisPorts []int32
	// identityEgress: credential endpoints a workload identity component opens (else they stay closed).
	identityEgress []endpoint
	// Secrets the overlay references but does not render: created out of band (docs/deploy.md says how).
	externalSecrets []string
}

// blobStorage is where an overlay keeps image bytes.
type blobStorage int

const (
	// blobVolume: a PersistentVolumeClaim every API and worker pod mounts at BLOB_URL's directory; the
	// overlay runs on one node, so ReadWriteOnce does.
	blobVolume blobStorage = iota + 1
	// blobObjectStore: an object store (BLOB_URL s3://, gs://, azblob://, or from a Secret key); no pod
	// mounts a claim, so pods run on any node with no ReadWriteMany storage.
	blobObjectStore
)

var production = expectation{blobs: blobObjectStore, externalRedisPorts: []int32{6379}, externalSecrets: []string{"upsize-secrets"}}

var overlays = map[string]expectation{
	"single-node": {inClusterRedis: true, blobs: blobVolume, externalSecrets: []string{"upsize-secrets"}},
	"production":  production,
	"production-sentinel": {blobs: blobObjectStore, externalRedisPorts: []int32{26379, 6379},
		externalSecrets: []string{"upsize-secrets"}},
}

// variant is an overlay rendered with a component of deploy/k8s/components added, as docs/deploy.md
// tells operators to. Every component needs a variant, so that each is checked like an overlay.
type variant struct {
	overlay, component string
	expect             expectation
}

var variants = map[string]variant{
	"production+gke-metadata-egress":     {"production", "gke-metadata-egress", withIdentityEgress(production, gkeMetadata, gkeMetadataDPv2)},
	"production+eks-pod-identity-egress": {"production", "eks-pod-identity-egress", withIdentityEgress(production, eksPodIdentityAgent)},
}

func withIdentityEgress(e expectation, eps ...endpoint) expectation {
	e.identityEgress = eps
	return e
}

func expectationOf(name string) expectation {
	if v, ok := variants[name]; ok {
		return v.expect
	}
	return overlays[name]
}

// rendered is one overlay's output, every object decoded into its API type.
type rendered struct {
	overlay string
	expect  expectation

	namespaces      []*corev1.Namespace
	configMaps      []*corev1.ConfigMap
	secrets         []*corev1.Secret
	services        []*corev1.Service
	pvcs            []*corev1.PersistentVolumeClaim
	serviceAccounts []*corev1.ServiceAccount
	deployments     []*appsv1.Deployment
	statefulSets    []*appsv1.StatefulSet
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	pdbs            []*policyv1.PodDisruptionBudget
	netpols         []*networkingv1.NetworkPolicy
	serviceMonitors []*monv1.ServiceMonitor
	prometheusRules []*monv1.PrometheusRule
	scaledObjects   []*kedav1alpha1.ScaledObject
	triggerAuths    []*kedav1alpha1.TriggerAuthentication
}

// kinds maps apiVersion/kind to the type an object must strictly decode into, and where it goes. Any
// other kind fails the render: an object nobody checks is an object nobody reviewed.
var kinds = map[string]func(r *rendered) any{
	"v1/Namespace":                            func(r *rendered) any { return addTo(&r.namespaces) },
	"v1/ConfigMap":                            func(r *rendered) any { return addTo(&r.configMaps) },
	"v1/Secret":                               func(r *rendered) any { return addTo(&r.secrets) },
	"v1/Service":                              func(r *rendered) any { return addTo(&r.services) },
	"v1/PersistentVolumeClaim":                func(r *rendered) any { return addTo(&r.pvcs) },
	"v1/ServiceAccount":                       func(r *rendered) any { return addTo(&r.serviceAccounts) },
	"apps/v1/Deployment":                      func(r *rendered) any { return addTo(&r.deployments) },
	"apps/v1/StatefulSet":                     func(r *rendered) any { return addTo(&r.statefulSets) },
	"autoscaling/v2/HorizontalPodAutoscaler":  func(r *rendered) any { return addTo(&r.hpas) },
	"policy/v1/PodDisruptionBudget":           func(r *rendered) any { return addTo(&r.pdbs) },
	"networking.k8s.io/v1/NetworkPolicy":      func(r *rendered) any { return addTo(&r.netpols) },
	"monitoring.coreos.com/v1/ServiceMonitor": func(r *rendered) any { return addTo(&r.serviceMonitors) },
	"monitoring.coreos.com/v1/PrometheusRule": func(r *rendered) any { return addTo(&r.prometheusRules) },
	"keda.sh/v1alpha1/ScaledObject":           func(r *rendered) any { return addTo(&r.scaledObjects) },
	"keda.sh/v1alpha1/TriggerAuthentication":  func(r *rendered) any { return addTo(&r.triggerAuths) },
}

func addTo[T any](list *[]*T) *T {
	v := new(T)
	*list = append(*list, v)
	return v
}

// renderedJSON caches each overlay's kustomize output (JSON per object); decode makes fresh objects from
// it, so a test may mutate what it gets.
var renderedJSON sync.Map // overlay name -> renderResult

type renderResult struct {
	docs [][]byte
	err  error
}

func renderOverlay(name string) ([][]byte, error) {
	if v, ok := renderedJSON.Load(name); ok {
		rr := v.(renderResult)
		return rr.docs, rr.err
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	var m resmap.ResMap
	var err error
	if v, ok := variants[name]; ok {
		m, err = renderVariant(k, v)
	} else {
		m, err = k.Run(filesys.MakeFsOnDisk(), filepath.Join(overlaysDir, name))
	}
	var docs [][]byte
	if err == nil {
		for _, res := range m.Resources() {
			b, merr := res.MarshalJSON()
			if merr != nil {
				err = fmt.Errorf("%s: %w", res.CurId(), merr)
				break
			}
			docs = append(docs, b)
		}
	}
	renderedJSON.Store(name, renderResult{docs, err})
	return docs, err
}

// renderVariant renders an overlay with a component added, from a kustomization next to the overlays in
// an in-memory copy of deploy/k8s (kustomize takes no absolute paths, and the tests write nothing).
func renderVariant(k *krusty.Kustomizer, v variant) (resmap.ResMap, error) {
	mem := filesys.MakeFsInMemory()
	k8s := filepath.Join(repoRoot, "deploy", "k8s")
	err := filepath.WalkDir(k8s, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(k8s, p)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(filepath.Join("/k8s", rel), b)
	})
	if err != nil {
		return nil, err
	}
	kust := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../overlays/" + v.overlay +
		"\ncomponents:\n  - ../components/" + v.component + "\n"
	if err := mem.WriteFile("/k8s/variant/kustomization.yaml", []byte(kust)); err != nil {
		return nil, err
	}
	return k.Run(mem, "/k8s/variant")
}

// decode strictly decodes every rendered object: unknown, duplicate or miscased fields are errors.
func decode(name string, docs [][]byte) (*rendered, error) {
	r := &rendered{overlay: name, expect: expectationOf(name)}
	for _, doc := range docs {
		var tm metav1.TypeMeta
		if err := json.UnmarshalCaseSensitivePreserveInts(doc, &tm); err != nil {
			return nil, err
		}
		key := tm.APIVersion + "/" + tm.Kind
		slot, ok := kinds[key]
		if !ok {
			return nil, fmt.Errorf("%s: no check knows this kind", key)
		}
		obj := slot(r)
		strict, err := json.UnmarshalStrict(doc, obj)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		if len(strict) > 0 {
			return nil, fmt.Errorf("%s: %v", key, strict)
		}
	}
	return r, nil
}

// overlayNames lists deploy/k8s/overlays, each of which must have an expectation, then the variants, one
// for each component under deploy/k8s/components.
func overlayNames(t *testing.T) []string {
	t.Helper()
	names := subdirs(t, overlaysDir)
	for _, n := range names {
		if _, ok := overlays[n]; !ok {
			t.Errorf("overlay %s has no expectation in render_test.go", n)
		}
	}
	for n := range overlays {
		if !slices.Contains(names, n) {
			t.Errorf("expected overlay %s does not exist", n)
		}
	}
	components := subdirs(t, componentsDir)
	for _, c := range components {
		found := false
		for _, v := range variants {
			found = found || v.component == c
		}
		if !found {
			t.Errorf("component %s has no variant in render_test.go", c)
		}
	}
	var vs []string
	for n, v := range variants {
		if !slices.Contains(components, v.component) {
			t.Errorf("variant %s: component %s does not exist", n, v.component)
		}
		vs = append(vs, n)
	}
	sort.Strings(names)
	sort.Strings(vs)
	return append(names, vs...)
}

var componentsDir = filepath.Join(repoRoot, "deploy", "k8s", "components")

func subdirs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

// load renders and decodes one overlay.
func load(t *testing.T, name string) *rendered {
	t.Helper()
	docs, err := renderOverlay(name)
	if err != nil {
		t.Fatalf("kustomize %s: %v", name, err)
	}
	r, err := decode(name, docs)
	if err != nil {
		t.Fatalf("decode %s: %v", name, err)
	}
	return r
}

// forEachOverlay runs check against every overlay and reports each problem it finds.
func forEachOverlay(t *testing.T, check func(r *rendered) []error) {
	t.Helper()
	for _, name := range overlayNames(t) {
		t.Run(name, func(t *testing.T) {
			r := load(t, name)
			for _, err := range check(r) {
				t.Error(err)
			}
		})
	}
}

func TestOverlaysRenderAndDecodeStrictly(t *testing.T) {
	for _, name := range overlayNames(t) {
		t.Run(name, func(t *testing.T) {
			r := load(t, name)
			if len(r.deployments) == 0 {
				t.Error("no Deployment rendered")
			}
		})
	}
}

// The decoder must refuse what the API server would refuse or silently drop.
func TestDecodeRejectsUnknownFieldsAndKinds(t *testing.T) {
	cases := map[string]string{
		"unknown field":      `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"replicaz":1}}`,
		"miscased field":     `{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"},"spec":{"Selector":{"a":"b"}}}`,
		"unknown kind":       `{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"x"}}`,
		"old API version":    `{"apiVersion":"autoscaling/v1","kind":"HorizontalPodAutoscaler","metadata":{"name":"x"}}`,
		"keda unknown":       `{"apiVersion":"keda.sh/v1alpha1","kind":"ScaledObject","metadata":{"name":"x"},"spec":{"minReplicas":1}}`,
		"monitoring unknown": `{"apiVersion":"monitoring.coreos.com/v1","kind":"PrometheusRule","metadata":{"name":"x"},"spec":{"group":[]}}`,
	}
	for name, doc := range cases {
		if _, err := decode("x", [][]byte{[]byte(doc)}); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	ok := `{"apiVersion":"monitoring.coreos.com/v1","kind":"PrometheusRule","metadata":{"name":"x"},` +
		`"spec":{"groups":[{"name":"g","rules":[{"alert":"A","expr":"up == 0","for":"5m"}]}]}}`
	if r, err := decode("x", [][]byte{[]byte(ok)}); err != nil || len(r.prometheusRules) != 1 {
		t.Errorf("a valid PrometheusRule: %v", err)
	}
}
