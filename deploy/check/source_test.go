package check

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The probes and ServiceMonitors use routes the binaries must really serve. The binaries cannot run here
// (Redis, libvips), so their route tables are read from the source.
func TestBinariesServeProbedRoutes(t *testing.T) {
	sources := map[string][]string{
		"internal/httpapi/routes.go": {`r.GET("` + probeRoutes.live + `"`, `r.GET("` + probeRoutes.ready + `"`, `r.GET("/metrics"`},
		"internal/app/worker.go":     {`"GET ` + probeRoutes.live + `"`, `"GET ` + probeRoutes.ready + `"`, `"GET /metrics"`},
	}
	for file, routes := range sources {
		b, err := os.ReadFile(filepath.Join(repoRoot, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if !strings.Contains(string(b), r) {
				t.Errorf("%s does not register %s", file, r)
			}
		}
	}
}

// checkDocs: docs/deploy.md names every overlay, every component and every Secret key the manifests read,
// so that an operator knows what to create before applying, and the Prometheus KEDA asks for the work
// backlog, so that one whose Prometheus is elsewhere knows what to patch.
func checkDocs(doc string, rs []*rendered) []error {
	var errs []error
	for _, r := range rs {
		for _, so := range r.scaledObjects {
			for _, tr := range so.Spec.Triggers {
				if addr := tr.Metadata["serverAddress"]; addr != "" && !strings.Contains(doc, addr) {
					errs = append(errs, fmt.Errorf("docs/deploy.md does not name %s, the Prometheus KEDA asks (%s)", addr, r.overlay))
				}
			}
		}
		if v, ok := variants[r.overlay]; ok {
			if !strings.Contains(doc, "components/"+v.component) {
				errs = append(errs, fmt.Errorf("docs/deploy.md does not mention the component components/%s", v.component))
			}
		} else if !strings.Contains(doc, "deploy/k8s/overlays/"+r.overlay) {
			errs = append(errs, fmt.Errorf("docs/deploy.md does not mention deploy/k8s/overlays/%s", r.overlay))
		}
		for name, keys := range r.secretKeys() {
			if !strings.Contains(doc, name) {
				errs = append(errs, fmt.Errorf("docs/deploy.md does not mention the Secret %s", name))
			}
			for _, k := range keys {
				if !strings.Contains(doc, k) {
					errs = append(errs, fmt.Errorf("docs/deploy.md does not mention key %s of Secret %s (%s)", k, name, r.overlay))
				}
			}
		}
	}
	return errs
}

// secretKeys lists the Secret keys a render reads (pod env and KEDA), by Secret.
func (r *rendered) secretKeys() map[string][]string {
	out := map[string][]string{}
	for _, w := range r.workloads() {
		for _, c := range allContainers(&w.template.Spec) {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					out[e.ValueFrom.SecretKeyRef.Name] = append(out[e.ValueFrom.SecretKeyRef.Name], e.ValueFrom.SecretKeyRef.Key)
				}
			}
		}
	}
	for _, ta := range r.triggerAuths {
		for _, ref := range ta.Spec.SecretTargetRef {
			out[ref.Name] = append(out[ref.Name], ref.Key)
		}
	}
	return out
}

func TestDocsNameOverlaysAndSecrets(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	var rs []*rendered
	for _, name := range overlayNames(t) {
		rs = append(rs, load(t, name))
	}
	for _, err := range checkDocs(string(doc), rs) {
		t.Error(err)
	}
}
