#!/usr/bin/env bash
# `make test`: every test, from a fresh Debian machine with Go. Installs what is missing, makes sure a
# Redis answers on 127.0.0.1:6379 (each test package uses its own DB number and cleans it), then runs
# go vet, all Go tests with the race detector (real Redis, real libvips), every fuzz target for a few
# seconds, and the shared acceptance suite against a freshly started build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# A Redis of the tests' own on 6379, unless TEST_REDIS_ADDR names another one; a real S3 server
# (versitygw, installed with go install the first time) on 7070, unless TEST_S3_ADDR names another one.
[ -n "${TEST_REDIS_ADDR:-}" ] || scripts/redis-local.sh 6379
[ -n "${TEST_S3_ADDR:-}" ] || scripts/s3-local.sh 7070 upsize-acceptance
step() { echo; echo "== $*"; }

step "go vet"
go vet ./...
step "go test -race (one line per test)"
go test -race -count=1 -timeout 20m -json ./... | go run ./scripts/testsum
# The packages that move image bytes again, on the object store (internal/blob tests both stores anyway).
step "go test -race with BLOB_URL=s3://… (jobs, httpapi, e2e)"
TEST_BLOB=s3 go test -race -count=1 -timeout 20m -json ./internal/jobs/ ./internal/httpapi/ ./internal/e2e/ | go run ./scripts/testsum
step "fuzz targets"
scripts/fuzz.sh
# The deploy checks are modules of their own (Kubernetes, KEDA, Prometheus, BuildKit types): the first run
# downloads and compiles them, which takes several minutes on a machine without a module cache.
for m in deploy/promcheck deploy/check; do
  step "$m (vet and test; the first run downloads its modules)"
  (cd "$m" && go mod download && go vet ./... && go test -count=1 ./...)
done
step "shared acceptance suite (file store)"
scripts/acceptance.sh
step "shared acceptance suite (object store)"
ACCEPTANCE_BLOB=s3 scripts/acceptance.sh
