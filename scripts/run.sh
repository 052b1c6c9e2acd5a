#!/usr/bin/env bash
# `make run`: installs what is missing, starts a Redis of its own unless REDIS_URL is set, builds and
# starts the worker and the API, and prints an admin token and a curl example that works.
# Ctrl-C stops everything. Logs go to var/api.log and var/worker.log.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
mkdir -p var

export BLOB_DIR=${BLOB_DIR:-$PWD/var/blobs}
export HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:8080}
worker_addr=${WORKER_HTTP_ADDR:-127.0.0.1:9090}
if [ -z "${ADMIN_TOKEN:-}" ]; then
  [ -s var/admin-token ] || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=\n' > var/admin-token)
  ADMIN_TOKEN=$(cat var/admin-token)
fi
export ADMIN_TOKEN

pids=()
stopping=
cleanup() { stopping=1; trap - EXIT INT TERM; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [ -z "${REDIS_URL:-}" ]; then
  rport=${REDIS_PORT:-6390}
  mkdir -p var/redis
  # AOF on and no eviction: queue, credits and request states must survive a restart and never be dropped.
  redis-server --bind 127.0.0.1 --port "$rport" --dir "$PWD/var/redis" --appendonly yes --save "" \
    --maxmemory-policy noeviction --logfile "$PWD/var/redis.log" &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  export REDIS_URL=redis://127.0.0.1:$rport/0
fi

go build -o bin/ ./cmd/api ./cmd/worker
HTTP_ADDR=$worker_addr MALLOC_ARENA_MAX=2 bin/worker >>var/worker.log 2>&1 &
pids+=($!)
bin/api >>var/api.log 2>&1 &
pids+=($!)

base="http://127.0.0.1:${HTTP_ADDR##*:}"
for _ in $(seq 100); do curl -fs "$base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$base/readyz" >/dev/null || { echo "the API did not become ready; see var/api.log" >&2; exit 1; }

# A demo account and image, so the example below works as printed.
admin=(-H "Authorization: Bearer $ADMIN_TOKEN" -H "Content-Type: application/json")
if curl -fs "${admin[@]}" "$base/admin/models/upsize" | grep -q '"model":null'; then
  curl -fs -X PUT "${admin[@]}" "$base/admin/models/upsize" -d '{"model":"lanczos3"}' >/dev/null
  curl -fs -X PUT "${admin[@]}" "$base/admin/credit-costs/upsize" -d '{"2x":1,"4x":2,"8x":4}' >/dev/null
fi
# The demo account is made once and reused while its key and image still work (var/demo.env).
demo_ok() {
  [ -f var/demo.env ] && . var/demo.env && [ -n "${key:-}" ] &&
    curl -fs -o /dev/null -H "X-Api-Key: $key" "$base/api/images/$image"
}
if ! demo_ok; then
  user=$(curl -fs -X POST "${admin[@]}" "$base/admin/users" -d '{"plan":"paid","credits":100}' | sed -E 's/.*"id":([0-9]+).*/\1/')
  key=$(curl -fs -X POST "${admin[@]}" "$base/admin/users/$user/api-keys" -d '{}' | sed -E 's/.*"apiKey":"([^"]+)".*/\1/')
  [ -f var/sample.png ] || { vips gaussnoise var/noise.v 256 192 --mean 128 --sigma 40 && vips cast var/noise.v var/sample.png uchar && rm -f var/noise.*; }
  image=$(curl -fs -H "X-Api-Key: $key" -F "file=@var/sample.png" -F "originalPrompt=demo" "$base/api/images" | sed -E 's/.*"imageId":([0-9]+).*/\1/')
  (umask 077; printf 'user=%s\nkey=%s\nimage=%s\n' "$user" "$key" "$image" > var/demo.env)
fi
credits=$(curl -fs "${admin[@]}" "$base/admin/users/$user" | sed -E 's/.*"credits":([0-9]+).*/\1/')
if [ "$credits" -lt 10 ]; then
  curl -fs -X PATCH "${admin[@]}" "$base/admin/users/$user" -d '{"credits":100}' >/dev/null && credits=100
fi

cat <<MSG

upsize is running: API $base (log var/api.log), worker http://$worker_addr (log var/worker.log)
Redis: $(echo "$REDIS_URL" | sed -E 's#//[^@]*@#//***@#')   blobs: $BLOB_DIR
Admin token: $ADMIN_TOKEN
Demo user $user with $credits credits, API key $key, image $image (256x192 PNG).

Upsize it 4x:
  curl -s -X POST -H 'X-Api-Key: $key' -H 'Content-Type: application/json' \\
    -d '{"scaleSize":"4x"}' $base/api/images/$image/upsize
Then fetch the result (its imageId is in the answer):
  curl -s -H 'X-Api-Key: $key' -o result.png $base/api/images/<imageId>/file
API description: $base/openapi.json     Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
# Ctrl-C ends here too: only a process that stopped by itself is worth a word.
[ -n "$stopping" ] || { echo "a process stopped by itself; see var/*.log" >&2; exit 1; }
