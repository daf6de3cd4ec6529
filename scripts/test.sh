#!/usr/bin/env bash
# Runs every statecar check on a fresh machine: installs what the tests need (redis-server,
# openssl, the Dapr JS and Python SDKs, a local Kubernetes), builds the binaries, then runs rustfmt,
# clippy, all tests and the end-to-end journey on a single-node cluster.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v redis-server >/dev/null 2>&1; then
  step "installing redis-server (Debian package)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
fi
# The package may start a system instance; the tests use their own servers on free ports.
redis-server --version

# tests/failures.rs cuts Redis off with an iptables DROP rule on its loopback port.
if ! command -v iptables >/dev/null 2>&1; then
  step "installing iptables (the network-cut test)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq iptables >/dev/null
fi

if ! command -v openssl >/dev/null 2>&1; then
  step "installing openssl (certificates for the Redis TLS test)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq openssl >/dev/null
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  step "installing Node.js (Debian package) for the Dapr JS SDK test"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
fi

# The counter example (examples/counter) that tests/run_command.rs runs uses requests.
if ! python3 -c 'import requests' >/dev/null 2>&1; then
  step "installing the Python package requests (examples/counter)"
  python3 -m pip install -q requests 2>/dev/null || {
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-requests >/dev/null
  }
fi

# tests/sdk_python.rs runs the official Dapr Python SDK (gRPC) against the sidecar.
if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("dapr") != "1.19.0")' >/dev/null 2>&1; then
  step "installing the Dapr Python SDK (tests/sdk-python)"
  python3 -m pip install -q --disable-pip-version-check 'dapr==1.19.0'
fi

step "installing the Dapr JS SDK (tests/sdk-js)"
lock=tests/sdk-js/package-lock.json
stamp=tests/sdk-js/node_modules/.statecar-lock
if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
  (cd tests/sdk-js && npm ci --no-audit --no-fund --loglevel=error)
  cp "$lock" "$stamp"
fi

# A fresh checkout gains nothing from incremental artifacts; they only take disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building statecar and statecar-operator"
cargo build -p sidecar -p operator --locked
export STATECAR_BIN="$PWD/target/debug/statecar"
export STATECAR_OPERATOR_BIN="$PWD/target/debug/statecar-operator"
# The image tests (tests/images.rs) check how images are assembled; the debug binaries built
# above serve for that as well as release ones and spare a release build.
export STATECAR_RELEASE_DIR="${STATECAR_RELEASE_DIR:-$PWD/target/debug}"

# A real Kubernetes API server for the operator tests: KUBECONFIG's cluster when it answers,
# else a local etcd + kube-apiserver + kube-controller-manager (built once, then cached).
step "starting the Kubernetes control plane (tests/cluster/up.sh)"
cluster_was_up=no
if [ -n "${KUBECONFIG:-}" ] || tests/cluster/up.sh --status >/dev/null 2>&1; then
  cluster_was_up=yes
fi
KUBECONFIG="$(tests/cluster/up.sh | tail -n 1)"
export KUBECONFIG
if [ "$cluster_was_up" = no ]; then
  trap 'tests/cluster/down.sh >/dev/null 2>&1 || true' EXIT
fi

step "cargo test"
cargo test --workspace --locked "$@"

# The benchmark harness end to end (a few seconds per workload; the figures are not checked):
# bench/run.sh without --smoke gives the published table.
step "benchmark harness smoke run (bench/run.sh --smoke)"
bench/run.sh --smoke

# The instruction counter (bench/instructions.sh compares two builds with it) on the debug build:
# it only checks that the tool works.
if ! command -v valgrind >/dev/null 2>&1; then
  step "installing valgrind (bench/instructions.py)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq valgrind >/dev/null
fi
step "instruction count smoke run (bench/instructions.py)"
python3 bench/instructions.py --seconds 1 --workloads get,save "$STATECAR_BIN"

# The fuzz targets (request path, bodies, component files), 10 s each on top of the corpus.
step "fuzzing smoke run (fuzz/smoke.sh)"
fuzz/smoke.sh

# The user's journey on a real single-node cluster (kubelet, containerd, bridge network): helm
# install, a Component, an annotated Deployment, state from inside its pods, a live config
# change, helm uninstall. It starts and stops the node cluster itself, in its own state dir.
step "end-to-end journey (tests/e2e/journey.sh)"
if ! command -v busybox >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq busybox-static curl >/dev/null
fi
STATECAR_CLUSTER_DIR="${STATECAR_E2E_CLUSTER_DIR:-$HOME/.cache/statecar/cluster-node}" \
  tests/e2e/journey.sh

step "all checks passed"
