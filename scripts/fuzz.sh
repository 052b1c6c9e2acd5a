#!/usr/bin/env bash
# Fuzzes every fuzz target of the module for a few seconds each (FUZZTIME, default 4s). Their committed
# corpora (testdata/fuzz) already run as plain tests in `go test`; this explores a little further on
# every run. A crash is written to the package's testdata/fuzz and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-4s}
n=0
for dir in $(grep -rl --include='*_test.go' '^func Fuzz' cmd internal | xargs -n1 dirname | sort -u); do
  pkg=./$dir
  for target in $(grep -h '^func Fuzz' "$dir"/*_test.go | sed 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do
    echo "fuzz $pkg $target ($fuzztime)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >/tmp/upsize-fuzz.log 2>&1 || { cat /tmp/upsize-fuzz.log; exit 1; }
    n=$((n+1))
  done
done
echo "fuzzed $n targets for $fuzztime each"
