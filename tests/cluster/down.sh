#!/usr/bin/env bash
# Stops the control plane started by tests/cluster/up.sh (only the processes named by its pid
# files), waits for them to exit and removes the pid files. Certificates, etcd data and logs
# stay, and so does the binary cache. A node (up.sh --node) is taken down first: its daemons and
# pods, then its mounts, cgroups, iptables chains, bridge and runtime state are removed and the
# sysctls it changed are restored.
#
#   tests/cluster/down.sh           stop
#   tests/cluster/down.sh --purge   stop, then delete the state dir (never the binary cache)
#
#   STATECAR_CLUSTER_DIR  state dir (default ~/.cache/statecar/cluster)
#   STATECAR_CACHE        binary cache root (default ~/.cache/statecar), only used to make sure
#                         --purge never deletes it
set -euo pipefail

purge=""
for arg in "$@"; do
  case "$arg" in
    --purge) purge=1 ;;
    -h | --help)
      sed -n '2,14p' "$0"
      exit 0
      ;;
    *)
      printf 'usage: %s [--purge]\n' "$0" >&2
      exit 2
      ;;
  esac
done

STATE_DIR="${STATECAR_CLUSTER_DIR:-$HOME/.cache/statecar/cluster}"
CACHE_ROOT="${STATECAR_CACHE:-$HOME/.cache/statecar}"

if [ ! -d "$STATE_DIR" ]; then
  printf 'nothing to stop (%s does not exist)\n' "$STATE_DIR"
  exit 0
fi
STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"

# pid_alive PIDFILE BINARY: the pid file names a live process running BINARY for this state dir,
# so a recycled pid is never signalled.
pid_alive() {
  local pid cmd
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cmd="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  [[ "$(basename -- "${cmd%%$'\n'*}")" == "$2" && "$cmd" == *"$STATE_DIR"* ]]
}

# Same lock as up.sh, so a stop does not race a start (but is not held up by a long build).
if [ -f "$STATE_DIR/.statecar-cluster" ]; then
  exec 9>"$STATE_DIR/.lock"
  flock -w 10 9 || printf 'up.sh seems to be running; stopping anyway\n' >&2
fi

stopped=0
# shellcheck source=tests/cluster/node.sh
. "$(dirname "$0")/node.sh"
if [ -d "$NODE_DIR" ]; then
  if node_any_alive; then stopped=$((stopped + 1)); fi
  printf 'stopping the node (state dir %s)\n' "$NODE_DIR"
  node_stop
fi
for name in kube-controller-manager kube-apiserver etcd; do
  pidfile="$STATE_DIR/$name.pid"
  [ -f "$pidfile" ] || continue
  if pid_alive "$pidfile" "$name"; then
    pid="$(cat "$pidfile")"
    printf 'stopping %s (pid %s)\n' "$name" "$pid"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      pid_alive "$pidfile" "$name" || break
      sleep 0.2
    done
    if pid_alive "$pidfile" "$name"; then
      printf '%s did not exit after 30 s, killing it\n' "$name"
      kill -9 "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        pid_alive "$pidfile" "$name" || break
        sleep 0.2
      done
    fi
    # Give the parent (init, once up.sh has exited) a moment to reap it, so no zombie lingers.
    for ((i = 0; i < 50; i++)); do
      [ -e "/proc/$pid" ] || break
      sleep 0.2
    done
    stopped=$((stopped + 1))
  fi
  rm -f "$pidfile"
done
# The node's network, mounts and state go only now: the API server listens on its bridge.
if [ -d "$NODE_DIR" ]; then node_cleanup; fi
[ "$stopped" -gt 0 ] || printf 'nothing running for %s\n' "$STATE_DIR"

if [ -n "$purge" ]; then
  cache_dir="$CACHE_ROOT/k8s"
  [ -d "$cache_dir" ] && cache_dir="$(cd "$cache_dir" && pwd -P)"
  if [ ! -f "$STATE_DIR/.statecar-cluster" ]; then
    printf 'not purging %s: it was not created by up.sh\n' "$STATE_DIR" >&2
    exit 1
  fi
  case "$cache_dir/" in
    "$STATE_DIR"/*)
      printf 'not purging %s: it contains the binary cache %s\n' "$STATE_DIR" "$cache_dir" >&2
      exit 1
      ;;
  esac
  rm -rf "$STATE_DIR"
  printf 'removed %s\n' "$STATE_DIR"
fi
