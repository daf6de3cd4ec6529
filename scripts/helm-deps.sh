#!/usr/bin/env bash
# Installs what tests/helm.py needs: the PyPI package helm-python-sdk, which carries Helm v4
# itself as a shared library (there is no helm binary for this platform), in a virtualenv under
# the statecar cache. Idempotent: when the pinned version is there it only prints the path.
#
# Usage: scripts/helm-deps.sh        # the last stdout line is the venv's python
# Environment: STATECAR_HELM_VENV (default $STATECAR_CACHE/helm-venv, STATECAR_CACHE defaulting
# to ~/.cache/statecar).
set -euo pipefail

SDK_VERSION=0.2.2
cache="${STATECAR_CACHE:-$HOME/.cache/statecar}"
venv="${STATECAR_HELM_VENV:-$cache/helm-venv}"
py="$venv/bin/python"

installed() {
  [ -x "$py" ] || return 1
  compgen -G "$venv/lib/python3*/site-packages/helm_python_sdk-$SDK_VERSION.dist-info" >/dev/null
}

if installed; then
  echo "$py"
  exit 0
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "helm-deps: installing python3 (Debian package)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3 python3-venv >/dev/null
  python=$(command -v python3)
fi

if [ ! -x "$py" ]; then
  echo "helm-deps: creating $venv" >&2
  mkdir -p "$(dirname "$venv")"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    # Debian's python3 keeps venv (ensurepip) in a package of its own.
    rm -rf "$venv"
    echo "helm-deps: installing python3-venv (Debian package)" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
    "$python" -m venv "$venv"
  fi
fi

echo "helm-deps: installing helm-python-sdk==$SDK_VERSION" >&2
"$py" -m pip install --quiet --disable-pip-version-check --no-input \
  "helm-python-sdk==$SDK_VERSION" >&2
"$py" -c 'import helm_python; print("helm-deps: Helm", helm_python.helm_sdk_version())' >&2
echo "$py"
