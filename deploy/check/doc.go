// Package check holds offline tests of the deployment artefacts: the Dockerfile (BuildKit's parser and
// lint rules) and the kustomize overlays under deploy/k8s (rendered with kustomize's Go API, decoded
// strictly into their real API types, and checked for what decoding cannot see: selectors, ports,
// probes, the KEDA trigger's PromQL against internal/metrics, environment names, shutdown timing,
// security and resources).
//
// It is its own module so that the Kubernetes, KEDA, Prometheus Operator and BuildKit dependencies
// (and Prometheus's PromQL parser) stay out of the service's go.mod. Run: cd deploy/check && go test ./...
package check
