# Sourced by the scripts that start builds of the service on their own ports (acceptance, hostile and the
# benchmarks): what they share.

# free_port prints a TCP port that is free on 127.0.0.1 now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_setup is what the service-level benchmarks (blob-, queue- and peer-bench.sh) share: the dependencies
# and the local Redis, out (var/bench) with the API, worker and load tool built into out/bin, and
# redis_url, Redis DB 13, held by one benchmark at a time.
bench_setup() {
  scripts/deps.sh
  scripts/redis-local.sh 6379
  out=var/bench
  mkdir -p "$out/bin"
  go build -o "$out/bin/" ./cmd/api ./cmd/worker ./cmd/loadtest
  redis_url=redis://127.0.0.1:6379/13
  exec 9>/tmp/upsize-bench-db13.lock
  flock -n 9 || { echo "another benchmark holds Redis DB 13 (/tmp/upsize-bench-db13.lock)" >&2; exit 1; }
}
