// Package promcheck holds the checks of the service's monitoring artefacts: the Grafana dashboard
// (deploy/grafana/upsize.json) and the PrometheusRule (deploy/k8s/base/prometheusrule.yaml). Its tests
// parse every PromQL expression with Prometheus's own parser, check every metric and label they use
// against what a real run of the API and a worker exposes, evaluate the dashboard and the alerts on
// that run's samples, and replay each alert against a scenario in which it must fire.
//
// It is a module of its own so that Prometheus's dependency tree stays out of the service's go.mod.
package promcheck
