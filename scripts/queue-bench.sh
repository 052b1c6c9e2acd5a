#!/usr/bin/env bash
# Cost-aware queueing, measured with the load tool (BENCHMARKS.md, "Cost-aware queueing"). Each measurement
# gets a fresh API and worker(s) (plain builds) on free ports, Redis DB 13 (emptied first) and a temporary
# blob directory:
#   A. heavy-burst-small-stream against one worker with WORKER_CONCURRENCY=2 (this build: one general slot
#      and one kept for small tasks): a paid user's 64² JPEG 2x one after another, idle, then during another
#      paid user's burst of HEAVY_N (12) 8x of a 1024² noise PNG, then that burst alone;
#   B. the same burst, with and without the stream, against two workers with WORKER_CONCURRENCY=1 each: two
#      slots that both take heavy work, the heavy throughput of n = 2 slots with none kept;
#   C. fairness, one worker with WORKER_CONCURRENCY=2: one user's 100 4x of a 1280² PNG (large: estimated
#      1.29 s) then a lone user's one; and 3 users × 30 then a lone one; TRIALS (10) trials each.
# A and B alternate, ROUNDS (3) times, so that the machine's other load falls on both; the load average is
# noted before and after each run. Raw reports in var/bench/queue-*.{json,md,svg}; the table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bench_setup
rounds=${ROUNDS:-3}
trials=${TRIALS:-10}
heavy_n=${HEAVY_N:-12}

pids=()
work=
stop() {
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
  [ -z "$work" ] || rm -rf "$work"
  work=
}
trap stop EXIT

# start <workers> <concurrency>: a fresh API and that many workers; sets base and token
start() {
  local nworkers=$1 concurrency=$2 api_port worker_port
  work=$(mktemp -d /tmp/upsize-queue-bench.XXXXXX)
  redis-cli -u "$redis_url" flushdb >/dev/null
  token=bench-$RANDOM$RANDOM
  unset BLOB_DIR
  export REDIS_URL=$redis_url BLOB_URL=file://$work/blobs ADMIN_TOKEN=$token UPSIZE_WAIT_TIMEOUT=10m
  for i in $(seq "$nworkers"); do
    worker_port=$(free_port)
    HTTP_ADDR=127.0.0.1:$worker_port WORKER_CONCURRENCY=$concurrency MALLOC_ARENA_MAX=2 "$out/bin/worker" >"$work/worker$i.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$worker_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  api_port=$(free_port)
  HTTP_ADDR=127.0.0.1:$api_port "$out/bin/api" >"$work/api.log" 2>&1 &
  pids+=($!)
  base=http://127.0.0.1:$api_port
  for _ in $(seq 100); do curl -fs "$base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
}

# loadtest <name> <flags…>: one run of the load tool against the service started last
loadtest() {
  local name=$1
  shift
  echo "== $name (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  cut -d' ' -f1-3 /proc/loadavg >"$out/queue-$name.load"
  "$out/bin/loadtest" -base "$base" -redis "$redis_url" -admin-token "$token" -configure -timeout 11m \
    -sample-interval 500ms -out "$out/queue-$name.json" "$@" >"$work/loadtest.log" 2>&1 ||
    { echo "loadtest failed:"; tail -20 "$work/loadtest.log"; tail -5 "$work"/*.log; exit 1; }
  cut -d' ' -f1-3 /proc/loadavg >>"$out/queue-$name.load"
  tail -1 "$work/loadtest.log"
}

heavy=(-scenario heavy-burst-small-stream -heavy 1024x1024:png:8x:noise -heavy-n "$heavy_n" -small 64x64:jpeg:2x -small-n 40)
for round in $(seq "$rounds"); do
  start 1 2
  loadtest "reserved-$round" "${heavy[@]}" -phases idle,burst,heavy
  stop
  start 2 1
  loadtest "ideal-$round" "${heavy[@]}" -phases burst,heavy
  stop
done
start 1 2
loadtest fair-1x100 -scenario fairness -large 1280x1280:png:4x -backlog-users 1 -backlog-n 100 -trials "$trials"
loadtest fair-3x30 -scenario fairness -large 1280x1280:png:4x -backlog-users 3 -backlog-n 30 -trials "$trials"
stop

python3 - "$out" "$rounds" <<'PY'
import json, sys, statistics
out, rounds = sys.argv[1], int(sys.argv[2])
def rep(name): return json.load(open(f"{out}/queue-{name}.json"))["scenario"]
def load(name): # 1-minute load average before and after the run
    lines = open(f"{out}/queue-{name}.load").read().split("\n")
    return "→".join(l.split()[0] for l in lines if l.strip())
def rng(xs, f="{:.0f}"):
    return f"{f.format(statistics.median(xs))} ({f.format(min(xs))}-{f.format(max(xs))})" if len(xs) > 1 else f.format(xs[0])
rows = {k: [] for k in ("idle50", "idle95", "dur50", "dur95", "bound", "met", "n", "ideal_dur95", "ideal_durmax",
                        "res_burst", "res_alone", "ideal_burst", "ideal_alone", "r_alone", "r_burst")}
for r in range(1, rounds + 1):
    a, b = rep(f"reserved-{r}")["heavyBurst"], rep(f"ideal-{r}")["heavyBurst"]
    rows["idle50"].append(a["idle"]["p50Ms"]); rows["idle95"].append(a["idle"]["p95Ms"])
    rows["dur50"].append(a["during"]["p50Ms"]); rows["dur95"].append(a["during"]["p95Ms"])
    rows["bound"].append(a["smallBoundMs"]); rows["met"].append(a["smallTargetMet"]); rows["n"].append(a["during"]["count"])
    rows["ideal_dur95"].append(b["during"]["p95Ms"]); rows["ideal_durmax"].append(b["during"]["maxMs"])
    rows["res_burst"].append(a["burst"]["perSecond"]); rows["res_alone"].append(a["heavyOnly"]["perSecond"])
    rows["ideal_burst"].append(b["burst"]["perSecond"]); rows["ideal_alone"].append(b["heavyOnly"]["perSecond"])
    rows["r_alone"].append(a["heavyOnly"]["perSecond"] / b["heavyOnly"]["perSecond"])
    rows["r_burst"].append(a["burst"]["perSecond"] / b["heavyOnly"]["perSecond"])
    print(f"round {r} (load {load(f'reserved-{r}')} / {load(f'ideal-{r}')}): small p95 idle {a['idle']['p95Ms']:.1f} ms, "
          f"during {a['during']['p95Ms']:.1f} ms ({a['during']['count']} requests; bound {a['smallBoundMs']:.1f}, "
          f"{'met' if a['smallTargetMet'] else 'NOT met'}); two general slots: during {b['during']['p95Ms']:.0f} ms; heavy/s: "
          f"reserved with stream {a['burst']['perSecond']:.3f}, alone {a['heavyOnly']['perSecond']:.3f}; "
          f"two slots with stream {b['burst']['perSecond']:.3f}, alone {b['heavyOnly']['perSecond']:.3f}")
print()
print(f"medians (ranges) over {rounds} round(s):")
print(f"  small 2x, idle:             p50 {rng(rows['idle50'], '{:.1f}')} ms, p95 {rng(rows['idle95'], '{:.1f}')} ms")
print(f"  small 2x, during the burst: p50 {rng(rows['dur50'], '{:.1f}')} ms, p95 {rng(rows['dur95'], '{:.1f}')} ms "
      f"(bound 2 × idle p95 + 100 ms: {rng(rows['bound'], '{:.1f}')} ms; met in {sum(rows['met'])} of {rounds})")
print(f"  small 2x during the burst, two general slots and none kept: p95 {rng(rows['ideal_dur95'])} ms, max {rng(rows['ideal_durmax'])} ms")
print(f"  heavy upsizes/s, one general slot + one kept: with the stream {rng(rows['res_burst'], '{:.3f}')}, alone {rng(rows['res_alone'], '{:.3f}')}")
print(f"  heavy upsizes/s, two general slots:          with the stream {rng(rows['ideal_burst'], '{:.3f}')}, alone {rng(rows['ideal_alone'], '{:.3f}')}")
print(f"  kept slot vs two general slots (alone/alone): {rng(rows['r_alone'], '{:.2f}')} (target ≥ 1 - 1/2 = 0.50; met in {sum(x >= 0.5 for x in rows['r_alone'])} of {rounds})")
print(f"  kept slot with the stream vs two general slots alone: {rng(rows['r_burst'], '{:.2f}')}")
for name in ("fair-1x100", "fair-3x30"):
    f = rep(name)["fairness"]; s = f["summary"]
    print(f"  {name} (load {load(name)}): {s['lone']} lone requests ({s['completed']} completed), latency p50 {s['latencyP50Ms']:.0f} ms, "
          f"max {s['latencyMaxMs']:.0f} ms (largest bound {s['boundLatencyMaxMs']:.0f} ms); served ahead mean {s['servedAheadMean']:.2f} "
          f"(expected {s['expectedAheadMean']:.2f}), max {s['servedAheadMax']} (bound whatever the timing: {s['designBoundAhead']}); "
          f"within the 99 % bound {s['withinBound']}/{s['lone']}; backlog completed before a lone one: median {s['backlogDoneBeforeP50']}, max {s['backlogDoneBeforeMax']}")
    lone = [l for t in f["trials"] for l in t["lone"]]
    tasks = [t["taskP50Ms"] for t in f["trials"]]
    print(f"    per lone request: first-queue ahead a = {[l['firstAhead'] for l in lone]}, served ahead = {[l['servedAhead'] for l in lone]} "
          f"(from more {[l['moreAhead'] for l in lone]}), bound = {[l['boundAhead'] for l in lone]}, "
          f"latency s = {[round(l['latencyMs'] / 1000, 1) for l in lone]}, latency bound s = {[round(l['boundLatencyMs'] / 1000, 1) for l in lone]}; "
          f"task p50 {rng(tasks)} ms")
PY
