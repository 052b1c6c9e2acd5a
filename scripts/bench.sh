#!/usr/bin/env bash
# `make bench`: every benchmark reported in BENCHMARKS.md, raw output in var/bench/*.txt.
# Needs the same machine set-up as `make test` (Redis, libvips, the vips command) and valgrind for the
# instruction counts. Run it on a quiet machine. The service-level comparisons run whole services and have
# scripts of their own: scripts/blob-bench.sh (object store), scripts/queue-bench.sh (cost-aware queueing),
# scripts/peer-bench.sh (against imaginary), scripts/hostile.sh (hostile clients).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh valgrind
scripts/redis-local.sh 6379
mkdir -p var/bench
run() { local name=$1; shift; echo "== $name: $*"; "$@" 2>&1 | grep -E '^(Benchmark|ok|FAIL|---)' | tee "var/bench/$name.txt"; }
run encoding   go test -run '^$' -bench 'Encoding' -benchtime 3x ./internal/imageops/
run vips-cli   go test -run '^$' -bench 'VersusVipsCLI$' -benchtime 7x -timeout 30m ./internal/imageops/
run vips-cli-instructions go test -run '^$' -bench 'VersusVipsCLIInstructions' -benchtime 1x -timeout 60m ./internal/imageops/
run resampler  go test -run '^$' -bench 'Resampler' -benchtime 5x -timeout 30m ./internal/imageops/
run png-throughput go test -run '^$' -bench 'PNGThroughput' -benchtime 3x -timeout 30m ./internal/imageops/
run calibrate-work go test -run '^$' -bench 'CalibrateWork' -benchtime 1x ./internal/policy/
run cancel-cpu go test -run '^$' -bench 'CancelReleasesCPU' -benchtime 5x ./internal/imageops/
run worst-case go test -run '^$' -bench 'WorstCaseTask' -benchtime 1x ./internal/imageops/
run soak       env UPSIZE_SOAK_ROUNDS=120 go test -run '^$' -bench 'MemoryOverLongRun' -benchtime 1x -timeout 30m ./internal/imageops/
run service    go test -run '^$' -bench . -benchtime 1x -timeout 30m ./internal/httpapi/
