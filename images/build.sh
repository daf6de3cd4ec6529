#!/usr/bin/env bash
# Builds the statecar, statecar-operator and pause container images without Docker, as
# docker-archive tarballs (what `docker save` writes) that `ctr -n k8s.io images import` and
# `docker load` read:
#
#   <out>/statecar-<version>.tar            statecar/statecar:<version>
#   <out>/statecar-operator-<version>.tar   statecar/statecar-operator:<version>
#   <out>/pause-<version>.tar               statecar/pause:<version>
#
# <version> is the workspace version in Cargo.toml. The images hold the same files as the
# Dockerfile's (the binary, the shared libraries it links, the loader, passwd/group with user
# nonroot 65532, the CA bundle, /tmp) and nothing else. Rebuilding from the same binaries gives
# byte-identical tarballs.
#
# Usage: images/build.sh [--out DIR] [--no-build] [--static]
#   --out DIR              where the tarballs go (default: target/images in the repository)
#   --no-build             use the release binaries as they are, even if older than the
#                          sources (for binaries built elsewhere, e.g. in CI)
#   --static               put a fully static statecar in the statecar image (glibc linked
#                          in with -C target-feature=+crt-static; no loader, no libraries in
#                          the layer), built for the host's target in
#                          $CARGO_TARGET_DIR/<host triple>/release; *-linux-gnu hosts only.
#                          The operator stays dynamic.
# Environment:
#   STATECAR_RELEASE_DIR   a directory with release builds of statecar and statecar-operator
#                          (default: $CARGO_TARGET_DIR/release, else target/release). They are
#                          built there with cargo when missing or older than the sources.
#   SOURCE_DATE_EPOCH      the mtime of every file in the images (default 0)
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
# Relative paths in the environment or on the command line are relative to the caller's cwd.
target="$(realpath -m "${CARGO_TARGET_DIR:-$repo/target}")"
out="$repo/target/images"
release="$(realpath -m "${STATECAR_RELEASE_DIR:-$target/release}")"
build=yes
static=no

while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$(realpath -m "${2:?--out needs a directory}")"; shift 2 ;;
    --out=*) out="$(realpath -m "${1#--out=}")"; shift ;;
    --no-build) build=no; shift ;;
    --static) static=yes; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$repo"
for tool in python3 ldd gcc strip; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is required" >&2; exit 1; }
done

version="$(python3 images/build.py --print-version)"

# A binary is reused when it exists and no source of its crate (or of crds/, or the workspace
# manifest and lock) is newer.
stale() { # binary crate-dir
  [ -x "$1" ] || return 0
  [ -n "$(find Cargo.toml Cargo.lock crds "$2" -type f ! -name '*.md' -newer "$1" -print -quit)" ]
}
if [ "$build" = no ]; then
  for bin in statecar statecar-operator; do
    [ -x "$release/$bin" ] || { echo "build.sh: --no-build, and $release/$bin is missing" >&2; exit 1; }
  done
  echo "==> using release binaries in $release as they are (--no-build)" >&2
elif stale "$release/statecar" sidecar || stale "$release/statecar-operator" operator; then
  if [ "$(basename "$release")" != release ]; then
    echo "build.sh: $release has no up-to-date statecar and statecar-operator, and is not a" \
      "cargo release directory to build them in" >&2
    exit 1
  fi
  echo "==> building release binaries in $release" >&2
  CARGO_TARGET_DIR="$(dirname "$release")" "${CARGO:-cargo}" build --release --locked \
    -p sidecar -p operator
else
  echo "==> reusing release binaries in $release" >&2
fi

statecar_bin="$release/statecar"
if [ "$static" = yes ]; then
  host="$("${RUSTC:-rustc}" -vV | sed -n 's/^host: //p')"
  if [[ "$host" != *-linux-gnu ]]; then
    echo "build.sh: --static links glibc statically and needs a *-linux-gnu host, not $host" >&2
    exit 1
  fi
  statecar_bin="$target/$host/release/statecar"
  if [ "$build" = no ]; then
    [ -x "$statecar_bin" ] || { echo "build.sh: --no-build, and $statecar_bin is missing" >&2; exit 1; }
  elif stale "$statecar_bin" sidecar; then
    echo "==> building a static statecar in $(dirname "$statecar_bin")" >&2
    # --target keeps the flag off build scripts and proc macros.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_TARGET_DIR="$target" \
      "${CARGO:-cargo}" build --release --locked --target "$host" -p sidecar
  fi
  if ! ldd "$statecar_bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
    echo "build.sh: --static, but $statecar_bin is not static" >&2
    exit 1
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "==> compiling images/pause/pause.c (static)" >&2
gcc -static -O2 -s -Wall -Wextra -Werror -DVERSION="\"$version\"" \
  -o "$work/pause" images/pause/pause.c

# Release builds are stripped already; a debug build would otherwise put hundreds of MiB of
# debug info into the image.
strip --strip-all -o "$work/statecar" "$statecar_bin"
strip --strip-all -o "$work/statecar-operator" "$release/statecar-operator"

echo "==> assembling images in $out" >&2
python3 images/build.py --out "$out" \
  --statecar "$work/statecar" \
  --operator "$work/statecar-operator" \
  --pause "$work/pause"
