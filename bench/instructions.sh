#!/usr/bin/env bash
# User-space instructions per request (valgrind's callgrind) of this tree's statecar and, when a
# git revision is given, of that revision's, side by side. See bench/README.md.
# Usage: bench/instructions.sh [REV] [--workloads get,save] [--seconds S]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

rev=""
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
  rev="$1"
  shift
fi

missing=()
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

target_dir="$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
out="$target_dir/bench/instructions"
mkdir -p "$out"

binaries=()
names=()
if [ -n "$rev" ]; then
  short="$(git rev-parse --short "$rev^{commit}")"
  scratch="$(mktemp -d)"
  worktree="$scratch/statecar-$short"
  git worktree add --quiet --detach "$worktree" "$short"
  trap 'git worktree remove --force "$worktree"; rmdir "$scratch"' EXIT
  # A target directory of its own: sharing this tree's would leave cargo's record of which
  # sources a binary came from pointing at the worktree, and the next build here would wrongly
  # count as up to date.
  rev_target="$target_dir/bench/rev-target"
  echo "==> cargo build --release -p sidecar (at $short, into $rev_target)" >&2
  (cd "$worktree" && CARGO_TARGET_DIR="$rev_target" cargo build --release -p sidecar --locked)
  cp "$rev_target/release/statecar" "$out/statecar-$short"
  binaries+=("$out/statecar-$short")
  names+=("$short")
fi
echo "==> cargo build --release -p sidecar (this tree)" >&2
cargo build --release -p sidecar --locked
cp "$target_dir/release/statecar" "$out/statecar-tree"
binaries+=("$out/statecar-tree")
names+=("this tree")

# Not exec: the EXIT trap removes the revision's worktree afterwards.
python3 bench/instructions.py --names "$(IFS=,; echo "${names[*]}")" "$@" "${binaries[@]}"
