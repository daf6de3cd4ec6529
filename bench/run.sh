#!/usr/bin/env bash
# Benchmarks statecar against webdis and raw Redis on this machine and prints one markdown
# table (also written to target/bench/results.md). See bench/README.md.
# Usage: bench/run.sh [--smoke] [--duration S] [--latency-duration S] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages: redis-server (with redis-tools' redis-benchmark), webdis, wrk.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v webdis >/dev/null 2>&1 || missing+=(webdis)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The packages may start system instances; the benchmark runs its own on free loopback ports.

# The measurements use release builds. A smoke run only checks that the harness works, so it
# uses the debug builds the test command has already made (no release build in CI).
profile=release
for arg in "$@"; do
  if [ "$arg" = --smoke ]; then profile=debug; fi
done
if [ "$profile" = release ]; then
  echo "==> cargo build --release -p sidecar -p statecar-bench" >&2
  cargo build --release -p sidecar -p statecar-bench --locked
else
  echo "==> cargo build -p sidecar -p statecar-bench" >&2
  cargo build -p sidecar -p statecar-bench --locked
fi
target_dir="$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

# A fully static build as well (glibc linked in with +crt-static: no loader, no shared
# libraries), for its size and to check that it runs; release runs only. --target keeps the
# flag off build scripts and proc macros, and the build in its own directory.
static=()
host="$(rustc -vV | sed -n 's/^host: //p')"
if [ "$profile" = release ] && [[ "$host" == *-linux-gnu ]]; then
  echo "==> cargo build --release --target $host -p sidecar (static: -C target-feature=+crt-static)" >&2
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release -p sidecar --locked --target "$host"
  static=(--static-statecar "$target_dir/$host/release/statecar")
fi

exec python3 bench/bench.py --statecar "$target_dir/$profile/statecar" \
  --fixed-rate "$target_dir/$profile/fixed-rate" --grpc-load "$target_dir/$profile/grpc-load" \
  ${static[@]+"${static[@]}"} "$@"
