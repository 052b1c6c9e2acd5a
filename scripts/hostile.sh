#!/usr/bin/env bash
# Runs the security review's attacks (cmd/hostile) against a build started here on free ports, Redis DB 14
# and a temporary blob directory, so it can run beside a running service (DB 0) and the acceptance run
# (DB 15). Arguments go to cmd/hostile, e.g. scripts/hostile.sh -scale 0.1 -only methods,small -json r.json
# The service keeps its defaults (BODY_TIMEOUT 60s, UPLOAD_MEMORY 128 MiB, VALIDATE_MEMORY 512 MiB,
# MAX_TOMBSTONES_PER_USER 1000, MAX_CONNECTIONS 8192); any of these set in the environment reaches both the
# service and cmd/hostile's expectations, e.g. BODY_TIMEOUT=5s for a quicker trickle-auth.
# See docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
redis_base=${TEST_REDIS_ADDR:-127.0.0.1:6379}
db=14
work=$(mktemp -d /tmp/upsize-hostile.XXXXXX)
go build -o "$work/" ./cmd/api ./cmd/worker

api_port=$(free_port); worker_port=$(free_port)
redis-cli -u "redis://$redis_base/$db" flushdb >/dev/null
# MALLOC_ARENA_MAX as in the Docker image: the memory figures are those of the deployed processes.
# BLOB_DIR is BLOB_URL's older spelling; both set would stop the service.
unset BLOB_DIR
export REDIS_URL=redis://$redis_base/$db BLOB_URL=file://$work/blobs ADMIN_TOKEN=hostile-$RANDOM$RANDOM MALLOC_ARENA_MAX=2
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  redis-cli -u "redis://$redis_base/$db" flushdb >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
HTTP_ADDR=127.0.0.1:$worker_port "$work/worker" >"$work/worker.log" 2>&1 & pids+=($!)
HTTP_ADDR=127.0.0.1:$api_port "$work/api" >"$work/api.log" 2>&1 & api_pid=$!; pids+=($api_pid)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$api_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$worker_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
echo "hostile.sh: API pid $api_pid on :$api_port, worker on :$worker_port, Redis DB $db; load: $(cut -d' ' -f1-3 /proc/loadavg)"
set +e
go run ./cmd/hostile -base "http://127.0.0.1:$api_port" -worker "http://127.0.0.1:$worker_port" \
  -admin-token "$ADMIN_TOKEN" -redis "$REDIS_URL" -api-pid "$api_pid" \
  -body-timeout "${BODY_TIMEOUT:-60s}" -max-tombstones "${MAX_TOMBSTONES_PER_USER:-1000}" \
  -upload-memory "${UPLOAD_MEMORY:-134217728}" -validate-memory "${VALIDATE_MEMORY:-536870912}" \
  -max-connections "${MAX_CONNECTIONS:-8192}" "$@"
rc=$?
set -e
echo "hostile.sh: load after the run: $(cut -d' ' -f1-3 /proc/loadavg); API now: $(grep -E '^VmRSS' /proc/$api_pid/status | tr -s ' \t' ' ')"
if [ $rc -ne 0 ]; then
  echo "--- api log (last 20 lines)"; tail -20 "$work/api.log"
  echo "--- worker log (last 20 lines)"; tail -20 "$work/worker.log"
fi
exit $rc
