#!/usr/bin/env bash
# `make test`: every test, from a fresh Debian machine with Go. Installs what is missing, makes sure a
# Redis answers on 127.0.0.1:6379 (each test package uses its own DB number and cleans it), then runs
# go vet, all Go tests with the race detector (real Redis, real libvips), every fuzz target for a few
# seconds, and the shared acceptance suite against a freshly started build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/redis-local.sh 6379
go vet ./...
go test -race -count=1 -timeout 20m ./...
scripts/fuzz.sh
(cd deploy/promcheck && go test -count=1 ./...)
(cd deploy/check && go test -count=1 ./...)
scripts/acceptance.sh
