#!/usr/bin/env bash
# Checks the single-node cluster of `tests/cluster/up.sh --node` end to end and prints timings:
#   1. up.sh --node (after a down.sh, so the start is measured from stopped): the node is Ready
#   2. a pod from a locally imported image runs (tests/cluster/node/probe.c, never pulled)
#   3. from the host: a Service ClusterIP answers
#   4. from a pod: the `kubernetes` Service ClusterIP reaches the API server, the name
#      <svc>.<ns>.svc.cluster.local resolves and that Service answers; kubectl logs/exec work
#   5. down.sh leaves nothing: no processes, bridge, iptables chains, mounts, netns, cgroups,
#      runtime state; the sysctls are as before
#   6. up.sh --node works again (node Ready, a pod runs), then down.sh again, checked again
#
# Uses STATECAR_CLUSTER_DIR (default ~/.cache/statecar/cluster-node; the default state dir of
# up.sh is refused, so a control plane other tests use is not touched). Stops whatever runs in
# that state dir. Exit 0 on success.
#
# Usage: tests/cluster/node-selfcheck.sh [--keep]   (--keep: leave the node cluster running)
set -euo pipefail

keep=""
case "${1:-}" in
  --keep) keep=1 ;;
  "") ;;
  *)
    sed -n '2,16p' "$0" >&2
    exit 2
    ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
export STATECAR_CLUSTER_DIR="${STATECAR_CLUSTER_DIR:-$HOME/.cache/statecar/cluster-node}"
if [ "$(realpath -m "$STATECAR_CLUSTER_DIR")" = "$(realpath -m "$HOME/.cache/statecar/cluster")" ]; then
  echo "refusing to use the default state dir $STATECAR_CLUSTER_DIR (other tests use it)" >&2
  exit 2
fi
mkdir -p "$STATECAR_CLUSTER_DIR"
state="$(cd "$STATECAR_CLUSTER_DIR" && pwd -P)"
unset KUBECONFIG STATECAR_NODE
ns="statecar-nodecheck-$$"
probe_image=statecar.invalid/cluster-probe:1.0
kcfg=""
kc() { kubectl --kubeconfig "$kcfg" --request-timeout=15s "$@"; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}
timings=()

sysctls=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom
  kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.bridge.bridge-nf-call-iptables)
sysctl_snapshot() {
  local k
  for k in "${sysctls[@]}"; do printf '%s=%s\n' "$k" "$(sysctl -n "$k" 2>/dev/null)"; done
}
netns_snapshot() { ls /run/netns 2>/dev/null | sort || true; }
# Host paths kubelet, CRI and CNI use whatever their configuration.
hostpaths_snapshot() { find /var/log/pods /var/log/containers /var/lib/kubelet /var/lib/cni 2>/dev/null | sort || true; }

# Everything down.sh must remove.
check_clean() {
  local what=$1 left="" t cmd p
  if ip link show statecar0 >/dev/null 2>&1; then left+=" bridge statecar0;"; fi
  for cmd in iptables ip6tables; do
    for t in filter nat mangle raw; do
      if "$cmd" -t "$t" -S 2>/dev/null | grep -qE '(KUBE-|CNI-|STATECAR-)'; then
        left+=" $cmd -t $t: $("$cmd" -t "$t" -S | grep -cE '(KUBE-|CNI-|STATECAR-)') rules/chains;"
      fi
    done
  done
  if awk -v p="$state/" 'index($5, p) == 1' /proc/self/mountinfo | grep -q .; then
    left+=" mounts: $(awk -v p="$state/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | head -n 3 | tr '\n' ' ');"
  fi
  for p in /proc/[0-9]*; do
    [ "$p" = "/proc/$$" ] && continue
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "$state/"; then
      left+=" process ${p#/proc/}: $(tr '\0' ' ' <"$p/cmdline" | cut -c1-80);"
    fi
  done
  if compgen -G "/sys/fs/cgroup/*/statecar-node" >/dev/null; then left+=" cgroups statecar-node;"; fi
  if [ -d "$state/node/run" ]; then left+=" $state/node/run;"; fi
  if [ "$(hostpaths_snapshot)" != "$hostpaths_before" ]; then
    left+=" host files: $(diff <(printf '%s\n' "$hostpaths_before") <(hostpaths_snapshot) | grep '^[<>]' | head -n 5 | tr '\n' ' ');"
  fi
  if [ "$(netns_snapshot)" != "$netns_before" ]; then left+=" netns: $(netns_snapshot | tr '\n' ' ');"; fi
  if [ "$(sysctl_snapshot)" != "$sysctl_before" ]; then
    left+=" sysctls: $(diff <(printf '%s\n' "$sysctl_before") <(sysctl_snapshot) | grep '^>' | tr '\n' ' ');"
  fi
  [ -z "$left" ] || fail "after $what:$left"
  echo "    ok: nothing left (processes, bridge, iptables, mounts, netns, cgroups, runtime state, host files, sysctls)"
}

node_up() {
  local t0 ready
  t0="$(now)"
  kcfg="$("$here/up.sh" --node 2>"$state/selfcheck-up.log" | tail -n 1)" || {
    tail -n 40 "$state/selfcheck-up.log" >&2
    fail "up.sh --node"
  }
  timings+=("up.sh --node ($1): $(since "$t0") s")
  ready="$(grep -o 'node Ready [0-9]* s after the control plane' "$state/selfcheck-up.log" || true)"
  [ -z "$ready" ] || timings+=("  of which $ready")
  [ "$(kc get node statecar-node -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ] ||
    fail "node statecar-node is not Ready"
  echo "    ok: node statecar-node Ready ($(since "$t0") s)"
}

node_down() {
  local t0
  t0="$(now)"
  "$here/down.sh" >"$state/selfcheck-down.log" 2>&1 || {
    cat "$state/selfcheck-down.log" >&2
    fail "down.sh"
  }
  timings+=("down.sh ($1): $(since "$t0") s")
}

# wait_phase NS POD: waits up to 60 s for Succeeded or Failed, prints the phase.
wait_phase() {
  local phase="" i
  for ((i = 0; i < 120; i++)); do
    phase="$(kc -n "$1" get pod "$2" -o 'jsonpath={.status.phase}' 2>/dev/null || true)"
    if [ "$phase" = Succeeded ] || [ "$phase" = Failed ]; then break; fi
    sleep 0.5
  done
  printf '%s\n' "$phase"
}

cleanup() {
  if [ -n "$kcfg" ] && [ -f "$kcfg" ]; then kc delete ns "$ns" --wait=false >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

echo "==> stopping anything running in $state"
"$here/down.sh" >/dev/null 2>&1 || true
netns_before="$(netns_snapshot)"
hostpaths_before="$(hostpaths_snapshot)"
sysctl_before="$(sysctl_snapshot)"

echo "==> up.sh --node"
node_up first

echo "==> daemons (resident memory)"
total=0
for d in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy containerd dnsmasq dns-hosts; do
  pid="$(cat "$state/$d.pid" 2>/dev/null || true)"
  rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
  total=$((total + rss))
  printf '    %-24s pid %-7s %6d MiB\n' "$d" "$pid" $((rss / 1024))
done
printf '    %-24s %d MiB in total (pods and their containerd shims not included)\n' "all" $((total / 1024))
timings+=("resident memory of the daemons: $((total / 1024)) MiB")

echo "==> a pod from the local image $probe_image, and a Service for it"
t0="$(now)"
kc create namespace "$ns" >/dev/null
kc -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: $probe_image
    imagePullPolicy: Never
    args: [serve, "8080"]
    ports: [{containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /, port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
YAML
ok=""
for _ in $(seq 1 90); do
  # The namespace's service-account token is created asynchronously; pod creation may race it.
  if kc -n "$ns" wait --for=condition=Ready pod/web --timeout=1s >/dev/null 2>&1; then
    ok=1
    break
  fi
  sleep 0.5
done
[ -n "$ok" ] || {
  kc -n "$ns" describe pod web >&2 || true
  fail "pod web not Ready"
}
pod_ip="$(kc -n "$ns" get pod web -o 'jsonpath={.status.podIP}')"
echo "    ok: pod web Ready on $pod_ip ($(since "$t0") s)"
timings+=("pod created -> Ready: $(since "$t0") s")

echo "==> the Service ClusterIP from the host"
svc_ip="$(kc -n "$ns" get svc web -o 'jsonpath={.spec.clusterIP}')"
reply=""
for _ in $(seq 1 30); do
  # shellcheck disable=SC2016 # expanded by the inner bash
  reply="$(timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/80"; printf "GET / HTTP/1.0\r\n\r\n" >&3; cat <&3' _ "$svc_ip" 2>/dev/null || true)"
  [[ "$reply" == *"probe ok web"* ]] && break
  sleep 0.5
done
[[ "$reply" == *"probe ok web"* ]] || fail "http://$svc_ip:80 from the host: ${reply:-no answer}"
echo "    ok: http://$svc_ip:80 -> $(printf '%s' "$reply" | tail -n 1)"

echo "==> from a pod: the kubernetes Service, DNS, the web Service"
t0="$(now)"
kc -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: $probe_image
    imagePullPolicy: Never
    args: [check, web.$ns.svc.cluster.local, "80"]
YAML
phase="$(wait_phase "$ns" client)"
logs="$(kc -n "$ns" logs client 2>&1 || true)"
printf '%s\n' "$logs" | sed 's/^/    | /'
[ "$phase" = Succeeded ] || fail "pod client: phase ${phase:-?}"
echo "    ok: pod client Succeeded ($(since "$t0") s)"

echo "==> kubectl exec into the pod"
out="$(kc -n "$ns" exec web -- /probe dns kubernetes.default.svc.cluster.local 2>&1)" || fail "exec: $out"
[ "$out" = 10.96.0.1 ] || fail "exec: kubernetes.default.svc.cluster.local -> $out"
echo "    ok: kubernetes.default.svc.cluster.local -> $out"

t0="$(now)"
kc delete ns "$ns" --timeout=60s >/dev/null || fail "deleting namespace $ns"
timings+=("namespace with 2 pods deleted: $(since "$t0") s")

echo "==> down.sh"
node_down first
check_clean "down.sh"

echo "==> up.sh --node again"
node_up second
t0="$(now)"
pod="nodecheck-$$"
kc -n default run "$pod" --image="$probe_image" --image-pull-policy=Never --restart=Never \
  -- dns kubernetes.default.svc.cluster.local >/dev/null
phase="$(wait_phase default "$pod")"
[ "$phase" = Succeeded ] || fail "pod $pod after the restart: ${phase:-?}"
echo "    ok: a pod ran after the restart ($(since "$t0") s)"
kc -n default delete pod "$pod" --wait=false >/dev/null

if [ -n "$keep" ]; then
  echo "==> leaving the node cluster running (--keep): export KUBECONFIG=$kcfg"
else
  echo "==> down.sh again"
  node_down second
  check_clean "the second down.sh"
fi
kcfg=""

echo "==> timings"
printf '    %s\n' "${timings[@]}"
echo "==> node selfcheck passed"
