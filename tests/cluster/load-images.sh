#!/usr/bin/env bash
# Imports docker-archive tarballs (images/build.sh, `docker save`) into the containerd of the
# node started by `tests/cluster/up.sh --node`, as `kind load image-archive` does. Nothing is
# pulled: pods then use the images by their tags (a versioned tag, never latest).
#
# Usage: tests/cluster/load-images.sh TAR [TAR ...]
# Uses STATECAR_CLUSTER_DIR (default ~/.cache/statecar/cluster), the state dir of up.sh.
set -euo pipefail

if [ $# -eq 0 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  [ $# -eq 0 ] && exit 2 || exit 0
fi
state="${STATECAR_CLUSTER_DIR:-$HOME/.cache/statecar/cluster}"
sock="$state/node/run/containerd/containerd.sock"
[ -S "$sock" ] || { echo "load-images.sh: no node runs in $state (start it with tests/cluster/up.sh --node)" >&2; exit 1; }

for tar in "$@"; do
  [ -s "$tar" ] || { echo "load-images.sh: $tar: no such tarball" >&2; exit 1; }
  refs="$(tar -xOf "$tar" manifest.json | python3 -c 'import json,sys; print(" ".join(t for m in json.load(sys.stdin) for t in m.get("RepoTags") or []))')"
  case " $refs " in
    "  ") echo "load-images.sh: $tar has no tag; an untagged image would be pulled" >&2; exit 1 ;;
    *:latest" "*) echo "load-images.sh: $tar is tagged latest, which means pull policy Always" >&2; exit 1 ;;
  esac
  ctr --address "$sock" --connect-timeout 5s --timeout 120s -n k8s.io images import "$tar" >/dev/null
  echo "loaded $refs"
done
