#!/usr/bin/env bash
# Installs what building and testing need on Debian when it is missing: libvips (headers for cgo, the
# `vips` command for benchmarks) and redis-server, plus any command named as an argument whose Debian
# package has the same name (`scripts/deps.sh valgrind`). Safe to run again: it installs nothing that is there.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
pkg-config --exists vips 2>/dev/null || missing+=(libvips-dev)
command -v vips >/dev/null 2>&1 || missing+=(libvips-tools)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v curl >/dev/null 2>&1 || missing+=(curl)
for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null 2>&1 || { echo "Go is not installed (https://go.dev/dl/)" >&2; exit 1; }
