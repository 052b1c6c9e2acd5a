#!/usr/bin/env bash
# Runs the shared acceptance suite (../shared/acceptance, or $ACCEPTANCE_DIR) against a build started here
# on free ports, Redis DB 15 and a temporary blob directory (ACCEPTANCE_BLOB=s3: a bucket of the test S3
# server), so it can run beside a running service.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
suite=${ACCEPTANCE_DIR:-../shared/acceptance}
[ -d "$suite" ] || { echo "acceptance suite not found at $suite (set ACCEPTANCE_DIR)" >&2; exit 1; }
redis_base=${TEST_REDIS_ADDR:-127.0.0.1:6379}
work=$(mktemp -d /tmp/upsize-acceptance.XXXXXX)
go build -o "$work/" ./cmd/api ./cmd/worker

api_port=$(free_port); worker_port=$(free_port)
redis-cli -u "redis://$redis_base/15" flushdb >/dev/null
unset BLOB_DIR
export REDIS_URL=redis://$redis_base/15 BLOB_URL=file://$work/blobs ADMIN_TOKEN=acceptance-$RANDOM$RANDOM
if [ "${ACCEPTANCE_BLOB:-}" = s3 ]; then
  # The test S3 server (scripts/s3-local.sh) and a bucket of this run's: ids restart with the database.
  s3=${TEST_S3_ADDR:-127.0.0.1:7070}
  scripts/s3-local.sh "${s3##*:}" upsize-acceptance
  export BLOB_URL="s3://upsize-acceptance?endpoint=http://$s3&region=us-east-1&use_path_style=true" \
    AWS_ACCESS_KEY_ID=${TEST_S3_ACCESS_KEY:-upsize-test} AWS_SECRET_ACCESS_KEY=${TEST_S3_SECRET_KEY:-upsize-test-secret}
fi
echo "acceptance run: BLOB_URL=$BLOB_URL" >&2
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  redis-cli -u "redis://$redis_base/15" flushdb >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
HTTP_ADDR=127.0.0.1:$worker_port "$work/worker" >"$work/worker.log" 2>&1 & pids+=($!)
HTTP_ADDR=127.0.0.1:$api_port "$work/api" >"$work/api.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$api_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
set +e
(cd "$suite" && go run . -base "http://127.0.0.1:$api_port" -admin-token "$ADMIN_TOKEN")
rc=$?
set -e
if [ $rc -ne 0 ]; then
  echo "--- api log (last 30 lines)"; tail -30 "$work/api.log"
  echo "--- worker log (last 30 lines)"; tail -30 "$work/worker.log"
fi
exit $rc
