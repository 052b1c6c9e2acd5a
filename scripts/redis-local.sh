#!/usr/bin/env bash
# Makes sure a Redis answers at 127.0.0.1:$1 (default 6379), starting one (no persistence) if none does.
set -euo pipefail
port=${1:-6379}
if redis-cli -p "$port" ping >/dev/null 2>&1; then exit 0; fi
dir=$(mktemp -d /tmp/upsize-redis.XXXXXX)
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$dir" \
  --logfile "$dir/redis.log" >/dev/null
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && exit 0; sleep 0.1; done
echo "redis-server did not start on port $port (see $dir/redis.log)" >&2
exit 1
