#!/usr/bin/env bash
# Throughput of this service beside a peer, h2non/imaginary, on the same machine and the same libvips
# (docs/imageops.md, "Against a peer (imaginary)"). One run:
#   - builds imaginary from its public module (PEER_VERSION, default v1.2.4; on bimg PEER_BIMG, default the
#     service's) in /tmp/peer, outside the repo,
#     unless /tmp/peer/bin/imaginary exists; nothing of it enters the repo;
#   - starts imaginary (its defaults: no throttle) on a free loopback port, and this service (plain builds in
#     var/bench/bin: API + one worker, WORKER_CONCURRENCY=2, a temporary blob directory, Redis DB 13 emptied
#     first, model lanczos3 = bicubic like imaginary's /enlarge), both with VIPS_CONCURRENCY=1 (bimg's
#     default and the worker's) and MALLOC_ARENA_MAX=2;
#   - draws photo-like inputs with `vips` (blurred colour noise over a colour gradient), 512² and 1024², each
#     as PNG and as JPEG Q90, and uploads each once to the service;
#   - for each case (format, side, scale) runs ROUNDS rounds, service and peer alternately (the first side
#     alternates too), each a closed loop of 2 requests in flight for N requests (N8 for 8x): two background
#     loops of curl calls, wall time measured around both. A service request is POST .../upsize (answers when
#     done) plus GET of the result file; a peer request is POST /enlarge with the image as body, the result
#     in its answer. One request per side before each case (not counted) checks the result's size and format.
# Encoders: JPEG Q90 on both sides (bimg adds optimize_coding, a second pass for smaller files); PNG zlib
# level 4 on both, with the service's row filter (Paeth) against bimg's (all filters, adaptive): the table
# shows both sizes. The table also says how many worker slots the service gave the case (one is kept for
# small tasks). Raw lines in var/bench/peer-<case>.txt, the table on stdout and in var/bench/peer-table.md.
# Env: N (12), N8 (4), ROUNDS (2), CASES (all; e.g. CASES='png-512-2x jpeg-512-2x'), PEER_VERSION, PEER_BIMG
# (the service's bimg version; delete /tmp/peer/bin to rebuild after changing either),
# VIPS_CONCURRENCY (1).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

all_cases="png-512-2x png-512-4x png-1024-2x png-1024-4x png-1024-8x jpeg-512-2x jpeg-512-4x jpeg-1024-2x jpeg-1024-4x jpeg-1024-8x"
read -ra cases <<<"${CASES:-$all_cases}"
for c in "${cases[@]}"; do
  [[ " $all_cases " == *" $c "* ]] || { echo "unknown case $c (cases: $all_cases)" >&2; exit 2; }
done
n=${N:-12}
n8=${N8:-4}
rounds=${ROUNDS:-2}
for v in "$n" "$n8" "$rounds"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "N, N8 and ROUNDS are whole numbers from 1" >&2; exit 2; }
done
peer_version=${PEER_VERSION:-v1.2.4}
peer_bimg=${PEER_BIMG:-$(go list -m -f '{{.Version}}' github.com/h2non/bimg)}
export VIPS_CONCURRENCY=${VIPS_CONCURRENCY:-1} MALLOC_ARENA_MAX=2
bench_setup

# The peer, built outside the repo. `go install …@latest` needs the proxy's version list, which a proxy may
# refuse; the module of a given version is enough: download it and build it with its own go.mod.
peer_bin=/tmp/peer/bin/imaginary
if [ ! -x "$peer_bin" ]; then
  echo "building imaginary $peer_version in /tmp/peer" >&2
  mkdir -p /tmp/peer/bin
  dir=$(cd /tmp/peer && GOWORK=off go mod download -json "github.com/h2non/imaginary@$peer_version" |
    sed -nE 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')
  [ -n "$dir" ] || { echo "could not download github.com/h2non/imaginary@$peer_version" >&2; exit 1; }
  rm -rf /tmp/peer/src
  cp -r "$dir" /tmp/peer/src
  chmod -R u+w /tmp/peer/src
  # on the bimg this service uses (PEER_BIMG), as the peer was measured in issue 14
  (cd /tmp/peer/src && GOWORK=off GOFLAGS=-mod=mod go get "github.com/h2non/bimg@$peer_bimg" &&
    GOWORK=off GOFLAGS=-mod=mod go build -o "$peer_bin" .)
  echo "$peer_version" >/tmp/peer/VERSION
fi

# Inputs: 3-band uchar, a colour gradient plus gaussian noise blurred with sigma 2 (std ~13 after the blur),
# so that they compress like a photo (JPEG Q90 ~2.5 bits/pixel); one seed per band and size.
draw() { # side
  local s=$1 d k
  d=$(mktemp -d /tmp/upsize-peer-img.XXXXXX)
  for b in 1 2 3; do vips gaussnoise "$d/n$b.v" "$s" "$s" --mean 0 --sigma 80 --seed $((s + b)); done
  vips bandjoin "$d/n1.v $d/n2.v $d/n3.v" "$d/n.v"
  vips gaussblur "$d/n.v" "$d/nb.v" 2
  vips xyz "$d/xy.v" "$s" "$s"
  vips extract_band "$d/xy.v" "$d/x.v" 0
  vips extract_band "$d/xy.v" "$d/y.v" 1
  vips add "$d/x.v" "$d/y.v" "$d/xpy.v"
  vips bandjoin "$d/x.v $d/y.v $d/xpy.v" "$d/g.v"
  k=$(python3 -c "print(200 / $s)")
  vips linear "$d/g.v" "$d/gl.v" "$k $k $(python3 -c "print(100 / $s)")" "28 28 28"
  vips add "$d/gl.v" "$d/nb.v" "$d/sum.v"
  vips cast "$d/sum.v" "$d/img.v" uchar
  vips copy "$d/img.v" "$out/peer-src-$s.png[compression=6,filter=all]"
  vips copy "$d/img.v" "$out/peer-src-$s.jpeg[Q=90]"
  rm -rf "$d"
}
for s in 512 1024; do
  if [ ! -f "$out/peer-src-$s.png" ] || [ ! -f "$out/peer-src-$s.jpeg" ]; then draw "$s"; fi
done

pids=()
loops=()
work=$(mktemp -d /tmp/upsize-peer-bench.XXXXXX)
stop() {
  [ ${#loops[@]} -eq 0 ] || kill "${loops[@]}" 2>/dev/null || true
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT TERM
logs() { tail -n 5 "$work"/*.log >&2 || true; }
wait_ready() { # url what
  for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "$2 did not become ready ($1)" >&2
  logs
  exit 1
}

# The peer, its defaults otherwise; its write timeout (60 s) raised for the largest results.
peer_port=$(free_port)
"$peer_bin" -a 127.0.0.1 -p "$peer_port" -http-write-timeout 600 -http-read-timeout 600 >"$work/peer.log" 2>&1 &
pids+=($!)
peer=http://127.0.0.1:$peer_port
wait_ready "$peer/health" imaginary

# The service
redis-cli -u "$redis_url" flushdb >/dev/null
token=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
unset BLOB_DIR
export REDIS_URL=$redis_url BLOB_URL=file://$work/blobs ADMIN_TOKEN=$token UPSIZE_WAIT_TIMEOUT=10m
worker_port=$(free_port)
HTTP_ADDR=127.0.0.1:$worker_port WORKER_CONCURRENCY=2 "$out/bin/worker" >"$work/worker.log" 2>&1 &
pids+=($!)
api_port=$(free_port)
HTTP_ADDR=127.0.0.1:$api_port "$out/bin/api" >"$work/api.log" 2>&1 &
pids+=($!)
base=http://127.0.0.1:$api_port
wait_ready "http://127.0.0.1:$worker_port/readyz" worker
wait_ready "$base/readyz" api
admin=(-H "Authorization: Bearer $token" -H "Content-Type: application/json")
curl -fsS -X PUT "${admin[@]}" "$base/admin/models/upsize" -d '{"model":"lanczos3"}' >/dev/null
curl -fsS -X PUT "${admin[@]}" "$base/admin/credit-costs/upsize" -d '{"2x":1,"4x":2,"8x":4}' >/dev/null
user=$(curl -fsS -X POST "${admin[@]}" "$base/admin/users" -d '{"plan":"paid","credits":10000000,"billing":"ok"}' |
  sed -E 's/.*"id":([0-9]+).*/\1/')
key=$(curl -fsS -X POST "${admin[@]}" "$base/admin/users/$user/api-keys" -d '{}' | sed -E 's/.*"apiKey":"([^"]+)".*/\1/')
declare -A ids
for s in 512 1024; do
  for f in png jpeg; do
    ids[$f-$s]=$(curl -fsS -H "X-Api-Key: $key" -F "file=@$out/peer-src-$s.$f" -F originalPrompt=peer-bench "$base/api/images" |
      sed -E 's/.*"imageId":([0-9]+).*/\1/')
  done
done

# One request; prints "<status> <result bytes> <microseconds>". The result goes to $3 (default: nowhere).
# service: POST upsize, then GET the new image's file.
service_one() { # format-side scale [file]
  local t0 t1 resp code new dl
  t0=$EPOCHREALTIME
  resp=$(curl -sS -X POST -H "X-Api-Key: $key" -H 'Content-Type: application/json' -d "{\"scaleSize\":\"$2\"}" \
    -w '\n%{http_code}' "$base/api/images/${ids[$1]}/upsize") || resp=$'\n000'
  code=${resp##*$'\n'}
  if [ "$code" = 201 ] && [[ $resp =~ \"imageId\":([0-9]+) ]]; then
    new=${BASH_REMATCH[1]}
    dl=$(curl -sS -o "${3:-/dev/null}" -w '%{http_code} %{size_download}' -H "X-Api-Key: $key" "$base/api/images/$new/file") || dl="000 0"
  else
    dl="$code 0"
  fi
  t1=$EPOCHREALTIME
  echo "$dl $((${t1/[.,]/} - ${t0/[.,]/}))"
}
# peer: POST /enlarge with the image as body; its answer is the result.
peer_one() { # format-side scale [file]
  local t0 t1 res f=${1%-*} s=${1#*-} side
  side=$((s * ${2%x}))
  t0=$EPOCHREALTIME
  res=$(curl -sS -o "${3:-/dev/null}" -w '%{http_code} %{size_download}' -H "Content-Type: image/$f" \
    --data-binary "@$out/peer-src-$s.$f" \
    "$peer/enlarge?width=$side&height=$side&type=$f&quality=90&compression=4") || res="000 0"
  t1=$EPOCHREALTIME
  echo "$res $((${t1/[.,]/} - ${t0/[.,]/}))"
}

one() { # side format-side scale [file]
  if [ "$1" = service ]; then service_one "${@:2}"; else peer_one "${@:2}"; fi
}

# check side case: one request (not counted) whose result must have the expected size and format
check() {
  local side=$1 c=$2 f s scale px file line got
  IFS=- read -r f s scale <<<"$c"
  px=$((s * ${scale%x}))
  file=$work/check.$f
  line=$(one "$side" "$f-$s" "$scale" "$file")
  got=$(vipsheader -f width "$file" 2>/dev/null)x$(vipsheader -f height "$file" 2>/dev/null)/$(vipsheader -f vips-loader "$file" 2>/dev/null)
  echo "check $side $line $got" >>"$raw"
  if [ "${got%/*}" != "${px}x$px" ] || [ "${got#*/}" != "${f}load" ]; then
    echo "$c: the $side answered $line with a ${got:-unreadable} result, expected ${px}x$px ${f}load" >&2
    logs
    exit 1
  fi
  rm -f "$file"
}

# measure side case round count: a closed loop of 2 requests in flight, count requests in all
measure() {
  local side=$1 c=$2 round=$3 count=$4 f s scale t0 t1 k
  IFS=- read -r f s scale <<<"$c"
  t0=$EPOCHREALTIME
  loops=()
  for k in 1 2; do
    (
      share=$(((count + 2 - k) / 2))
      for _ in $(seq "$share"); do
        echo "req $side $round $k $(one "$side" "$f-$s" "$scale")"
      done >"$work/loop$k"
    ) &
    loops+=($!)
  done
  wait "${loops[@]}"
  loops=()
  t1=$EPOCHREALTIME
  cat "$work/loop1" "$work/loop2" >>"$raw"
  echo "wall $side $round $count $((${t1/[.,]/} - ${t0/[.,]/}))" >>"$raw"
}

processed() { # queue: tasks asynq counts as processed there
  local v
  v=$(redis-cli -u "$redis_url" get "asynq:{$1}:processed")
  echo "${v:-0}"
}

{
  echo "date $(date -u +%FT%TZ)"
  echo "service $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git --no-optional-locks diff --quiet HEAD 2>/dev/null || echo '+uncommitted')"
  echo "peer imaginary $(cat /tmp/peer/VERSION 2>/dev/null || echo unknown) bimg $(sed -nE 's/.*h2non\/bimg (v[^ ]+).*/\1/p' /tmp/peer/src/go.mod 2>/dev/null || true)"
  echo "libvips $(vips --version)"
  echo "env VIPS_CONCURRENCY=$VIPS_CONCURRENCY WORKER_CONCURRENCY=2 N=$n N8=$n8 ROUNDS=$rounds"
} >"$out/peer-env.txt"

for c in "${cases[@]}"; do
  raw=$out/peer-$c.txt
  count=$n
  [[ $c == *-8x ]] && count=$n8
  echo "== $c: $rounds round(s) of $count requests a side (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  echo "case $c $count $rounds" >"$raw"
  check service "$c"
  check peer "$c"
  small0=$(processed upsize_paid_small)
  large0=$(($(processed upsize_paid) + $(processed upsize_paid_more)))
  echo "load-before $(cut -d' ' -f1-3 /proc/loadavg)" >>"$raw"
  for round in $(seq "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then order=(service peer); else order=(peer service); fi
    for side in "${order[@]}"; do measure "$side" "$c" "$round" "$count"; done
  done
  echo "load-after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$raw"
  echo "queues small $(($(processed upsize_paid_small) - small0)) large $(($(processed upsize_paid) + $(processed upsize_paid_more) - large0))" >>"$raw"
done

python3 - "$out" "${cases[@]}" <<'PY'
import sys
out, cases = sys.argv[1], sys.argv[2:]
rows, failed = [], 0
for c in cases:
    req = {"service": [], "peer": []}
    wall = {"service": {}, "peer": {}}
    load, slots, count, rounds = {}, "?", 0, 0
    for line in open(f"{out}/peer-{c}.txt"):
        w = line.split()
        if w[0] == "case":
            count, rounds = int(w[2]), int(w[3])
        elif w[0] == "req":  # req side round loop status bytes microseconds
            req[w[1]].append((int(w[4]), int(w[5]), int(w[6]) / 1e6))
        elif w[0] == "wall":  # wall side round count microseconds
            wall[w[1]][int(w[2])] = (int(w[3]), int(w[4]) / 1e6)
        elif w[0] in ("load-before", "load-after"):
            load[w[0]] = w[1]
        elif w[0] == "queues":
            slots = "2 (small)" if int(w[4]) == 0 else "1 (large)"
    cells = {}
    for side in ("service", "peer"):
        bad = [r for r in req[side] if r[0] not in (200, 201)]
        failed += len(bad)
        if bad:
            cells[side] = (None, f"FAILED {len(bad)}/{len(req[side])} (status {bad[0][0]})", "-")
            continue
        per_round = [n / s for n, s in wall[side].values()]
        total = sum(n for n, _ in wall[side].values()) / sum(s for _, s in wall[side].values())
        mean_bytes = sum(r[1] for r in req[side]) / len(req[side])
        spread = f" ({min(per_round):.2f}-{max(per_round):.2f})" if len(per_round) > 1 else ""
        cells[side] = (total, f"{total:.2f}{spread}", f"{mean_bytes / 1e6:.2f} MB")
    s, p = cells["service"], cells["peer"]
    ratio = f"{s[0] / p[0]:.2f}" if s[0] and p[0] else "-"
    f, side, scale = c.split("-")
    px = int(side) * int(scale[:-1])
    rows.append(f"| {f.upper()} {side}² {scale} | {px}² | {count}×{rounds} | {s[1]} | {p[1]} | **{ratio}** | {s[2]} | {p[2]} "
                f"| {slots} | {load.get('load-before', '?')} → {load.get('load-after', '?')} |")
table = ["| case | result | requests × rounds | service images/s | imaginary images/s | service / imaginary "
         "| service mean result | imaginary mean result | service slots | load average |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"] + rows
text = "\n".join(table)
print(text)
print("\nimages/s: all requests of a side over their summed wall time; in brackets the range over rounds.")
print("service slots: the worker keeps one of its 2 slots for small tasks (estimated ≤ 1 s); a large one runs on the other only.")
open(f"{out}/peer-table.md", "w").write(open(f"{out}/peer-env.txt").read() + "\n" + text + "\n")
sys.exit(1 if failed else 0)
PY
