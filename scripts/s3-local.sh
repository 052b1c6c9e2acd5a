#!/usr/bin/env bash
# Usage: scripts/s3-local.sh [port [bucket...]]
# Makes sure an S3 server answers at 127.0.0.1:$1 (default 7070), starting one if none does: versitygw
# (Apache-2.0) with its posix backend on a fresh directory under /tmp, listening on 127.0.0.1 only, with the
# fixed test credentials below (the ones internal/tests3 uses). versitygw is looked up on PATH, in var/bin
# and in $(go env GOPATH)/bin; when missing it is installed into var/bin with `go install` (about 1.5 min).
# Safe to run twice, also at the same time (a lock serialises the check and the start).
#
# Then creates the buckets given after the port, if missing (the tests make their own). Use it:
#   scripts/s3-local.sh 7070 upsize
#   BLOB_URL='s3://upsize?endpoint=http://127.0.0.1:7070&region=us-east-1&use_path_style=true' \
#   AWS_ACCESS_KEY_ID=upsize-test AWS_SECRET_ACCESS_KEY=upsize-test-secret ...
set -euo pipefail
port=${1:-7070}
buckets=("${@:2}")
version=v1.8.0
access=upsize-test
secret=upsize-test-secret
repo=$(cd "$(dirname "$0")/.." && pwd)

# Any HTTP answer counts (an S3 server answers 403 to an anonymous GET /): something S3-like listens there.
answers() { [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$port/" || true)" != 000 ]; }

# mkbuckets creates the buckets (an existing one answers 409: fine), with curl's own SigV4 signing.
mkbuckets() {
  local b code
  for b in ${buckets[@]+"${buckets[@]}"}; do
    code=$(curl -s -o /dev/null -m 10 -w '%{http_code}' -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" \
      --user "$access:$secret" -H "x-amz-content-sha256: $(printf '' | sha256sum | cut -d' ' -f1)" \
      "http://127.0.0.1:$port/$b" || true)
    case $code in
      200|409) ;;
      *) echo "s3-local: creating bucket $b on 127.0.0.1:$port answered $code" >&2; return 1 ;;
    esac
  done
}

if answers; then mkbuckets; exit 0; fi

exec 9>"/tmp/upsize-s3-$port.lock"
flock -w 300 9 || { echo "s3-local: waited 5 min for another s3-local.sh on port $port" >&2; exit 1; }
if answers; then mkbuckets; exit 0; fi

bin=$(command -v versitygw || true)
for b in "$repo/var/bin/versitygw" "$(go env GOPATH)/bin/versitygw"; do
  if [ -z "$bin" ] && [ -x "$b" ]; then bin=$b; fi
done
if [ -z "$bin" ]; then
  echo "s3-local: installing versitygw $version into var/bin (go install, about 1.5 min)" >&2
  mkdir -p "$repo/var/bin"
  GOBIN="$repo/var/bin" GOFLAGS= go install "github.com/versity/versitygw/cmd/versitygw@$version"
  bin=$repo/var/bin/versitygw
fi

dir=$(mktemp -d /tmp/upsize-s3.XXXXXX)
mkdir -p "$dir/data"
# setsid + nohup: the server outlives this script and the shell (or test run) that started it; it must not
# inherit the lock (fd 9).
setsid nohup "$bin" --port "127.0.0.1:$port" --access "$access" --secret "$secret" --region us-east-1 \
  --keep-alive --quiet posix "$dir/data" >"$dir/versitygw.log" 2>&1 </dev/null 9>&- &
echo $! >"$dir/pid"
for _ in $(seq 100); do
  if answers; then mkbuckets; exit 0; fi
  if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then break; fi
  sleep 0.1
done
echo "versitygw did not start on 127.0.0.1:$port (see $dir/versitygw.log)" >&2
exit 1
