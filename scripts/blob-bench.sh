#!/usr/bin/env bash
# The object store against the file store on this machine (BENCHMARKS.md, "Object store"): for each store,
# a fresh API and worker (plain builds, WORKER_CONCURRENCY=2) on Redis DB 13 and either a temporary
# directory or a bucket of the local S3 server (scripts/s3-local.sh), then
#   1. idle 2x latency: 30 sequential 2x upsizes of a 256² PNG, p50 and p95;
#   2. the load tool's burst (same seed, so the same requests): completed upsizes per second;
#   3. the worst-case task, an 8x of a 1250² noise PNG (100 MP out): its time and the worker's peak RSS.
# The stores are measured alternately, ROUNDS times (default 2), so that the machine's other load falls on
# both. Raw output in var/bench/blob-*.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bench_setup
scripts/s3-local.sh 7070 upsize-bench
rounds=${ROUNDS:-2}
n=${BURST_N:-120}
if [ ! -f "$out/noise1250.png" ]; then # colour noise: one band per seed
  for b in 1 2 3; do vips gaussnoise "$out/n$b.v" 1250 1250 --mean 128 --sigma 80 --seed $b; done
  vips bandjoin "$out/n1.v $out/n2.v $out/n3.v" "$out/n.v" && vips cast "$out/n.v" "$out/noise1250.png" uchar
  rm -f "$out"/n*.v
fi
[ -f "$out/small256.png" ] || vips black "$out/small256.png" 256 256 --bands 3

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap stop EXIT

measure() { # store round
  local store=$1 round=$2 work blob api_port worker_port base token
  work=$(mktemp -d /tmp/upsize-blob-bench.XXXXXX)
  if [ "$store" = s3 ]; then
    blob="s3://upsize-bench?endpoint=http://127.0.0.1:7070&region=us-east-1&use_path_style=true&prefix=r$round-$RANDOM/"
  else
    blob="file://$work/blobs"
  fi
  redis-cli -u "$redis_url" flushdb >/dev/null
  api_port=$(free_port); worker_port=$(free_port); token=bench-$RANDOM
  export REDIS_URL=$redis_url BLOB_URL=$blob ADMIN_TOKEN=$token AWS_ACCESS_KEY_ID=upsize-test AWS_SECRET_ACCESS_KEY=upsize-test-secret
  unset BLOB_DIR
  HTTP_ADDR=127.0.0.1:$worker_port WORKER_CONCURRENCY=2 MALLOC_ARENA_MAX=2 "$out/bin/worker" >"$work/worker.log" 2>&1 & pids+=($!)
  local wpid=$!
  HTTP_ADDR=127.0.0.1:$api_port "$out/bin/api" >"$work/api.log" 2>&1 & pids+=($!)
  base=http://127.0.0.1:$api_port
  for _ in $(seq 100); do curl -fs "$base/readyz" >/dev/null 2>&1 && curl -fs "http://127.0.0.1:$worker_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  local admin=(-H "Authorization: Bearer $token" -H "Content-Type: application/json")
  curl -fs -X PUT "${admin[@]}" "$base/admin/models/upsize" -d '{"model":"lanczos3"}' >/dev/null
  curl -fs -X PUT "${admin[@]}" "$base/admin/credit-costs/upsize" -d '{"2x":1,"4x":2,"8x":4}' >/dev/null
  local user key small big
  user=$(curl -fs -X POST "${admin[@]}" "$base/admin/users" -d '{"plan":"paid","credits":100000}' | sed -E 's/.*"id":([0-9]+).*/\1/')
  key=$(curl -fs -X POST "${admin[@]}" "$base/admin/users/$user/api-keys" -d '{}' | sed -E 's/.*"apiKey":"([^"]+)".*/\1/')
  small=$(curl -fs -H "X-Api-Key: $key" -F "file=@$out/small256.png" "$base/api/images" | sed -E 's/.*"imageId":([0-9]+).*/\1/')
  big=$(curl -fs -H "X-Api-Key: $key" -F "file=@$out/noise1250.png" "$base/api/images" | sed -E 's/.*"imageId":([0-9]+).*/\1/')

  # 1. idle 2x latency
  : >"$out/blob-$store-$round-idle.txt"
  for i in $(seq 30); do
    curl -fs -o /dev/null -w '%{time_total}\n' -X POST -H "X-Api-Key: $key" "$base/api/images/$small/upsize" >>"$out/blob-$store-$round-idle.txt"
  done
  # 3. worst case (before the burst, on an idle worker): time and peak RSS of the worker
  echo 5 >"/proc/$wpid/clear_refs" 2>/dev/null || true
  local t
  t=$(curl -fs -o /dev/null -w '%{time_total}' -X POST -H "X-Api-Key: $key" -H 'Content-Type: application/json' \
    -d '{"scaleSize":"8x"}' "$base/api/images/$big/upsize")
  echo "$t $(grep VmHWM "/proc/$wpid/status" | awk '{print $2}')" >"$out/blob-$store-$round-worst.txt"
  # 2. the burst
  "$out/bin/loadtest" -base "$base" -redis "$redis_url" -admin-token "$token" -burst -n "$n" -seed 7 \
    -cancel-share 0 -free-share 0 -sizes 256x256:3,512x512:2,1024x1024:1 -scales 2x:70,4x:25,8x:5 \
    -sample-interval 500ms -out "$out/blob-$store-$round-burst.json" >"$work/loadtest.log" 2>&1 ||
    { echo "loadtest failed:"; tail -20 "$work/loadtest.log"; exit 1; }
  stop
  rm -rf "$work"
}

for round in $(seq "$rounds"); do
  for store in file s3; do
    echo "== round $round: $store"
    measure "$store" "$round"
  done
done

python3 - "$out" "$rounds" <<'PY'
import json, sys, statistics, datetime
out, rounds = sys.argv[1], int(sys.argv[2])
def t(s): return datetime.datetime.fromisoformat(s.replace('Z', '+00:00'))
for store in ("file", "s3"):
    idle, rate, worst, rss = [], [], [], []
    for r in range(1, rounds + 1):
        idle += [float(x) for x in open(f"{out}/blob-{store}-{r}-idle.txt").read().split()]
        w = open(f"{out}/blob-{store}-{r}-worst.txt").read().split()
        worst.append(float(w[0])); rss.append(int(w[1]) / 1024)
        rep = json.load(open(f"{out}/blob-{store}-{r}-burst.json"))
        done = [q for q in rep["perRequest"] if q["outcome"] == "completed"]
        start = min(t(q["sent"]) for q in rep["perRequest"])
        end = max(t(q["sent"]) + datetime.timedelta(microseconds=q["latencyNs"] / 1000) for q in done)
        rate.append(len(done) / (end - start).total_seconds())
    idle.sort()
    print(f"{store}: idle 2x p50 {statistics.median(idle)*1000:.1f} ms, p95 {idle[int(len(idle)*0.95)]*1000:.1f} ms; "
          f"burst {statistics.median(rate):.2f} completed/s (rounds {', '.join(f'{x:.2f}' for x in rate)}); "
          f"worst case {statistics.median(worst):.1f} s, worker peak RSS {max(rss):.0f} MiB")
PY
