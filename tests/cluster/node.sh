# shellcheck shell=bash
# The single local node of `tests/cluster/up.sh --node`: containerd, kubelet, kube-proxy,
# kube-scheduler, a bridge network and dnsmasq for Service names. Sourced by up.sh and down.sh,
# which define STATE_DIR, LOGS, PKI, BIN_DIR, pid_alive and (up.sh only) PORT, launch,
# wait_for, fail_with_log, step and info. See tests/cluster/README.md.
#
# Everything the node starts talks only to loopback and to the bridge below:
#   - containerd runs with HTTP(S)_PROXY=http://127.0.0.1:9 (a closed port), so any image pull
#     fails at once; every image is imported from a local tarball and has a version tag;
#   - kubelet, kube-proxy and kube-scheduler get the same proxy (NO_PROXY: the bridge subnet)
#     and kubelet AWS_EC2_METADATA_DISABLED=true;
#   - dnsmasq has no upstream servers (--no-resolv) and listens on the bridge address only;
#   - a mangle FORWARD rule drops anything routed between the bridge and any other interface,
#     so pods reach only the host's bridge address, each other and Services.

NODE_NAME=statecar-node
NODE_BRIDGE=statecar0
NODE_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
NODE_SERVICE_CIDR=10.96.0.0/12 # up.sh's --service-cluster-ip-range
NODE_CGROUP=statecar-node
NODE_DIR="$STATE_DIR/node"
NODE_RUN="$NODE_DIR/run" # runtime state (containerd, kubelet, IPAM), deleted by down.sh
NODE_SOCK="$NODE_RUN/containerd/containerd.sock"
NODE_PROXY=http://127.0.0.1:9
NODE_GUARD_CHAIN=STATECAR-NODE-GUARD
NODE_PAUSE_REF=statecar.invalid/cluster-pause:1.0
NODE_PROBE_REF=statecar.invalid/cluster-probe:1.0
NODE_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/node"
NODE_REPO="$(cd "$NODE_SRC/../../.." && pwd)"
# Stop order; the start order is the reverse.
NODE_DAEMONS=(kube-scheduler kube-proxy kubelet dns-hosts dnsmasq containerd)
# sysctls kubelet, kube-proxy or the bridge plugin may change; restored by node_cleanup.
NODE_SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet vm.overcommit_memory
  vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)

node_binary() {
  case "$1" in
    dns-hosts) echo python3 ;;
    *) echo "$1" ;;
  esac
}

node_any_alive() {
  local d
  for d in "${NODE_DAEMONS[@]}"; do
    pid_alive "$STATE_DIR/$d.pid" "$(node_binary "$d")" && return 0
  done
  return 1
}

node_all_alive() {
  local d
  for d in "${NODE_DAEMONS[@]}"; do
    pid_alive "$STATE_DIR/$d.pid" "$(node_binary "$d")" || return 1
  done
}

node_stop_daemon() { # NAME [SECONDS]
  local name=$1 secs=${2:-15} bin pid i
  bin="$(node_binary "$name")"
  if pid_alive "$STATE_DIR/$name.pid" "$bin"; then
    pid="$(cat "$STATE_DIR/$name.pid")"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
      pid_alive "$STATE_DIR/$name.pid" "$bin" || break
      sleep 0.1
    done
    if pid_alive "$STATE_DIR/$name.pid" "$bin"; then kill -9 "$pid" 2>/dev/null || true; fi
    for ((i = 0; i < 50; i++)); do
      [ -e "/proc/$pid" ] || break
      sleep 0.1
    done
  fi
  rm -f "$STATE_DIR/$name.pid"
}

node_ctr() { ctr --address "$NODE_SOCK" --connect-timeout 5s --timeout 60s -n k8s.io "$@"; }

# ---------------------------------------------------------------------------------------------
# Teardown (down.sh, and up.sh before a fresh start): node_stop, then the control plane, then
# node_cleanup. Stops only what the pid files, the containerd socket of this state dir and the
# cgroup $NODE_CGROUP name, and removes the bridge, the iptables chains, mounts, cgroups and
# runtime state. Safe to run more than once.
# ---------------------------------------------------------------------------------------------
node_cgroup_pids() {
  local d
  for d in /sys/fs/cgroup/*/"$NODE_CGROUP"; do
    [ -d "$d" ] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true
  done | sort -un || true
}

# node_stop: the node's daemons, pods and containerd. Run before the control plane stops.
node_stop() {
  [ -d "$NODE_DIR" ] || return 0
  local d pid i m
  NODE_NETNS=()
  # All at once (each takes a second or two), then wait for each.
  for d in kube-scheduler kube-proxy kubelet dns-hosts dnsmasq; do
    if pid_alive "$STATE_DIR/$d.pid" "$(node_binary "$d")"; then kill "$(cat "$STATE_DIR/$d.pid")" 2>/dev/null || true; fi
  done
  for d in kube-scheduler kube-proxy kubelet dns-hosts dnsmasq; do node_stop_daemon "$d" 15; done

  # Pod sandboxes and containers: remember the sandboxes' network namespaces, kill every task.
  if pid_alive "$STATE_DIR/containerd.pid" containerd && [ -S "$NODE_SOCK" ]; then
    local ids
    ids="$(node_ctr containers ls -q 2>/dev/null || true)"
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086 # ids is a whitespace-separated list
      mapfile -t NODE_NETNS < <(for i in $ids; do node_ctr containers info "$i" 2>/dev/null; printf '\n\0'; done |
        python3 -c '
import json, sys
for doc in sys.stdin.read().split("\0"):
    try:
        spec = json.loads(doc).get("Spec") or {}
    except ValueError:
        continue
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        p = ns.get("path") or ""
        if ns.get("type") == "network" and (p.startswith("/var/run/netns/") or p.startswith("/run/netns/")):
            print(p)
' | sort -u)
      for i in $(node_ctr tasks ls -q 2>/dev/null || true); do
        node_ctr tasks kill -s SIGKILL "$i" >/dev/null 2>&1 || true
      done
      for i in $(node_ctr tasks ls -q 2>/dev/null || true); do
        node_ctr tasks delete -f "$i" >/dev/null 2>&1 || true
      done
    fi
  fi
  # Whatever is still in the node's cgroups (pod processes) is killed.
  for ((i = 0; i < 20; i++)); do
    pid="$(node_cgroup_pids)"
    [ -n "$pid" ] || break
    # shellcheck disable=SC2086
    kill -9 $pid 2>/dev/null || true
    sleep 0.1
  done
  node_stop_daemon containerd 10
  # Shims of this containerd (their -address is this state dir's socket) exit after their task;
  # any left over are stopped.
  for ((i = 0; i < 30; i++)); do
    pid="$(pgrep -f -- "-address $NODE_SOCK" || true)"
    [ -n "$pid" ] || break
    # shellcheck disable=SC2086
    if ((i < 20)); then kill $pid 2>/dev/null || true; else kill -9 $pid 2>/dev/null || true; fi
    sleep 0.1
  done
  # Remembered for node_cleanup (same process) and in case it runs later.
  if [ "${#NODE_NETNS[@]}" -gt 0 ]; then printf '%s\n' "${NODE_NETNS[@]}" >>"$NODE_DIR/netns"; fi
}

# node_cleanup: mounts, network namespaces, iptables chains, the bridge, cgroups, sysctls and
# runtime state. Run after the control plane has stopped (the API server listens on the bridge
# address: while it runs, the bridge must stay, or its connections would be routed elsewhere).
node_cleanup() {
  [ -d "$NODE_DIR" ] || return 0
  local d i m
  if [ -f "$NODE_DIR/netns" ]; then
    while IFS= read -r m; do
      case "$m" in /var/run/netns/cni-* | /run/netns/cni-*) ;; *) continue ;; esac
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
      rm -f "$m"
    done <"$NODE_DIR/netns"
    rm -f "$NODE_DIR/netns"
  fi
  # Mounts under the state dir (kubelet's volumes and its rshared root, containerd's rootfs and
  # shm mounts), deepest first.
  for ((i = 0; i < 3; i++)); do
    mapfile -t m < <(awk -v p="$STATE_DIR/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo |
      awk '{print length($0) " " $0}' | sort -rn | cut -d' ' -f2-)
    [ "${#m[@]}" -gt 0 ] || break
    for d in "${m[@]}"; do
      d="$(printf '%b' "$d")" # mountinfo escapes spaces as \040
      umount "$d" 2>/dev/null || umount -l "$d" 2>/dev/null || true
    done
  done

  node_iptables_cleanup
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && [ -f "$NODE_DIR/bridge.owner" ]; then
    ip link del "$NODE_BRIDGE" 2>/dev/null || true
  fi
  rm -f "$NODE_DIR/bridge.owner"
  if command -v conntrack >/dev/null 2>&1; then
    conntrack -D -s "$NODE_CIDR" >/dev/null 2>&1 || true
    conntrack -D -d "$NODE_CIDR" >/dev/null 2>&1 || true
    conntrack -D -d "$NODE_SERVICE_CIDR" >/dev/null 2>&1 || true
  fi
  for d in /sys/fs/cgroup/*/"$NODE_CGROUP"; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  node_restore_sysctls

  # Files kubelet and the CNI library keep outside the state dir: pod log directories
  # (/var/log/pods/<ns>_<pod>_<uid>, with links in /var/log/containers) and CNI result caches.
  if [ -d "$NODE_RUN/kubelet/pods" ]; then
    for d in "$NODE_RUN"/kubelet/pods/*/; do
      [ -d "$d" ] || continue
      i="$(basename "$d")"
      [[ "$i" =~ ^[0-9a-f-]+$ ]] || continue
      rm -rf /var/log/pods/*_"$i"
    done
  fi
  find /var/log/containers -maxdepth 1 -xtype l -lname '/var/log/pods/*' -delete 2>/dev/null || true
  rm -f /var/lib/cni/results/statecar-node-* 2>/dev/null || true
  if [ -f "$NODE_DIR/created-host-dirs" ]; then
    while IFS= read -r d; do
      case "$d" in
        /var/log/pods | /var/log/containers) rm -rf "$d" ;; # kubelet's pod logs and links
        /var/lib/kubelet) # kubelet 1.20 always puts its device-plugin socket there
          rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/DEPRECATION ;;
        /run/containerd | /run/netns | /var/lib/cni) ;;
        *) continue ;;
      esac
      [ -d "$d" ] && find "$d" -depth -type d -empty -delete 2>/dev/null || true
    done <"$NODE_DIR/created-host-dirs"
    rm -f "$NODE_DIR/created-host-dirs"
  fi
  if awk -v p="$NODE_RUN/" 'index($5, p) == 1 {exit 1}' /proc/self/mountinfo; then
    rm -rf "$NODE_RUN"
  else
    printf 'warning: mounts left under %s; not deleting it\n' "$NODE_RUN" >&2
  fi
  rm -f "$NODE_DIR/enabled"
}

# Removes the chains kubelet, kube-proxy, the CNI plugins and this script create (KUBE-*,
# CNI-*, STATECAR-*) and the rules that jump to them, from every table, IPv4 and IPv6.
node_iptables_cleanup() {
  local cmd table chain rule
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null 2>&1 || continue
    for table in filter nat mangle raw; do
      "$cmd" -t "$table" -S >/dev/null 2>&1 || continue
      # Rules in any chain that jump to one of ours, then the chains themselves.
      { "$cmd" -t "$table" -S 2>/dev/null | grep -E '^-A .* -j (KUBE-|CNI-|STATECAR-)' || true; } |
        while IFS= read -r rule; do
          eval "set -- ${rule#-A }"
          "$cmd" -t "$table" -D "$@" 2>/dev/null || true
        done
      for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-|STATECAR-)/ {print $2}'); do
        "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-|STATECAR-)/ {print $2}'); do
        "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

node_save_sysctls() {
  [ -f "$NODE_DIR/sysctl.saved" ] && return 0
  local k v
  for k in "${NODE_SYSCTLS[@]}"; do
    v="$(sysctl -n "$k" 2>/dev/null)" || continue
    printf '%s=%s\n' "$k" "$v"
  done >"$NODE_DIR/sysctl.saved.tmp"
  mv -f "$NODE_DIR/sysctl.saved.tmp" "$NODE_DIR/sysctl.saved"
}

node_restore_sysctls() {
  [ -f "$NODE_DIR/sysctl.saved" ] || return 0
  local k v
  while IFS='=' read -r k v; do
    [ -n "$k" ] || continue
    [ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] || sysctl -q -w "$k=$v" >/dev/null 2>&1 || true
  done <"$NODE_DIR/sysctl.saved"
  rm -f "$NODE_DIR/sysctl.saved"
}

# ---------------------------------------------------------------------------------------------
# Start (up.sh only)
# ---------------------------------------------------------------------------------------------
node_packages() {
  local need=() p
  for p in containerd runc containernetworking-plugins iptables conntrack dnsmasq-base gcc libc6-dev python3; do
    pkg_installed "$p" || need+=("$p")
  done
  apt_install "${need[@]}"
}

node_network_up() {
  mkdir -p "$NODE_DIR"
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && [ ! -f "$NODE_DIR/bridge.owner" ]; then
    die "network interface $NODE_BRIDGE exists but was not created for $STATE_DIR (another 'up.sh --node' state dir?); stop that one first"
  fi
  if ip route show "$NODE_CIDR" 2>/dev/null | grep -qv "dev $NODE_BRIDGE"; then
    die "$NODE_CIDR is already routed on this host: $(ip route show "$NODE_CIDR")"
  fi
  node_save_sysctls
  step "network: bridge $NODE_BRIDGE $NODE_IP on $NODE_CIDR"
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
    printf '%s\n' "$STATE_DIR" >"$NODE_DIR/bridge.owner"
  fi
  printf '%s\n' "$STATE_DIR" >"$NODE_DIR/bridge.owner"
  ip addr replace "$NODE_IP/24" dev "$NODE_BRIDGE"
  sysctl -q -w "net.ipv6.conf.$NODE_BRIDGE.disable_ipv6=1" >/dev/null 2>&1 || true
  ip link set "$NODE_BRIDGE" up
  # Routing is needed between pods and Service IPs; nothing may be routed off the bridge.
  iptables -t mangle -N "$NODE_GUARD_CHAIN" 2>/dev/null || iptables -t mangle -F "$NODE_GUARD_CHAIN"
  iptables -t mangle -A "$NODE_GUARD_CHAIN" -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP
  iptables -t mangle -A "$NODE_GUARD_CHAIN" -o "$NODE_BRIDGE" ! -i "$NODE_BRIDGE" -j DROP
  iptables -t mangle -C FORWARD -j "$NODE_GUARD_CHAIN" 2>/dev/null ||
    iptables -t mangle -I FORWARD 1 -j "$NODE_GUARD_CHAIN"
  # Packets for Service IPs that no kube-proxy rule has translated (yet), or for the pod subnet
  # once the bridge is gone, would follow the default route: they are dropped instead.
  iptables -t mangle -N "$NODE_GUARD_CHAIN-OUT" 2>/dev/null || iptables -t mangle -F "$NODE_GUARD_CHAIN-OUT"
  iptables -t mangle -A "$NODE_GUARD_CHAIN-OUT" -o "$NODE_BRIDGE" -j RETURN
  iptables -t mangle -A "$NODE_GUARD_CHAIN-OUT" -o lo -j RETURN
  iptables -t mangle -A "$NODE_GUARD_CHAIN-OUT" -d "$NODE_CIDR" -j DROP
  iptables -t mangle -A "$NODE_GUARD_CHAIN-OUT" -d "$NODE_SERVICE_CIDR" -j DROP
  iptables -t mangle -C POSTROUTING -j "$NODE_GUARD_CHAIN-OUT" 2>/dev/null ||
    iptables -t mangle -I POSTROUTING 1 -j "$NODE_GUARD_CHAIN-OUT"
  sysctl -q -w net.ipv4.ip_forward=1 >/dev/null
}

# node_pki: the kubelet client certificate the API server uses (logs, exec) and tokens for the
# node, kube-proxy and kube-scheduler.
node_pki() {
  if [ ! -s "$PKI/apiserver-kubelet-client.crt" ]; then
    (
      set -e
      cd "$PKI"
      umask 077
      printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >kubelet-client.ext
      openssl genrsa -out apiserver-kubelet-client.key 2048
      openssl req -new -key apiserver-kubelet-client.key -subj '/O=system:masters/CN=kube-apiserver-kubelet-client' -out kc.csr
      openssl x509 -req -in kc.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile kubelet-client.ext -out apiserver-kubelet-client.crt
      rm -f kc.csr ca.srl kubelet-client.ext
    ) >"$LOGS/pki-node.log" 2>&1 || fail_with_log "generating the kubelet client certificate failed" "$LOGS/pki-node.log"
  fi
  local user groups
  while read -r user groups; do
    grep -q ",$user,$user," "$PKI/tokens.csv" ||
      (umask 077 && printf '%s,%s,%s,"%s"\n' "$(openssl rand -hex 32)" "$user" "$user" "$groups" >>"$PKI/tokens.csv")
  done <<EOF
system:node:$NODE_NAME system:nodes
system:kube-proxy system:node-proxier
system:kube-scheduler system:kube-scheduler
EOF
}

node_token() { grep ",$1,$1," "$PKI/tokens.csv" | head -n 1 | cut -d, -f1; }

# Builds the pause and probe images (static C programs) when missing or older than the sources.
node_images() {
  local img="$NODE_DIR/images" b
  mkdir -p "$img"
  for b in pause probe; do
    if [ ! -s "$img/$b.tar" ] || [ "$NODE_SRC/$b.c" -nt "$img/$b.tar" ] || [ "$NODE_SRC/mkimage.py" -nt "$img/$b.tar" ]; then
      gcc -static -O2 -s -o "$img/$b" "$NODE_SRC/$b.c" >"$LOGS/images.log" 2>&1 ||
        fail_with_log "compiling $b.c failed" "$LOGS/images.log"
      local ref=$NODE_PAUSE_REF
      [ "$b" = pause ] || ref=$NODE_PROBE_REF
      python3 "$NODE_SRC/mkimage.py" "$img/$b.tar.tmp" "$ref" "/$b" "$img/$b:/$b" >>"$LOGS/images.log" 2>&1 ||
        fail_with_log "packing the $b image failed" "$LOGS/images.log"
      mv -f "$img/$b.tar.tmp" "$img/$b.tar"
    fi
  done
  # The project's pause image (images/build.sh) when it has been built; else the one above.
  NODE_PAUSE_TAR="${STATECAR_PAUSE_TAR:-}"
  if [ -z "$NODE_PAUSE_TAR" ]; then
    NODE_PAUSE_TAR="$(ls -t "$NODE_REPO"/target/images/pause-*.tar 2>/dev/null | head -n 1 || true)"
  fi
  if [ -n "$NODE_PAUSE_TAR" ]; then
    NODE_SANDBOX_REF="$(tar -xOf "$NODE_PAUSE_TAR" manifest.json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["RepoTags"][0])')" ||
      die "no RepoTags in $NODE_PAUSE_TAR"
    case "$NODE_SANDBOX_REF" in *:latest | "") die "$NODE_PAUSE_TAR: the pause image needs a version tag" ;; esac
  else
    NODE_PAUSE_TAR="$img/pause.tar"
    NODE_SANDBOX_REF=$NODE_PAUSE_REF
  fi
}

node_write_kubeconfig() { # FILE TOKEN
  (
    umask 077
    cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: statecar-local
  cluster:
    server: https://$NODE_IP:${PORT[apiserver]}
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: user
  user:
    token: $2
contexts:
- name: statecar-local
  context: {cluster: statecar-local, user: user}
current-context: statecar-local
EOF
  )
  mv -f "$1.tmp" "$1"
}

# The API server keeps the port of the `kubernetes` Endpoints from an earlier run when its own
# port changed (1.20 reconciles ports only once, at start, and not always); pods would get
# "connection refused" from 10.96.0.1. Wait for the endpoint and correct the port.
node_fix_kubernetes_endpoints() {
  local i cur=""
  for ((i = 0; i < 40; i++)); do
    cur="$(kc -n default get endpoints kubernetes -o 'jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}' 2>/dev/null || true)"
    [ "$cur" = "$NODE_IP:${PORT[apiserver]}" ] && return 0
    if [[ "$cur" == "$NODE_IP:"[0-9]* ]]; then
      info "correcting the kubernetes Endpoints port (${cur#*:} -> ${PORT[apiserver]})"
      kc -n default patch endpoints kubernetes --type=json \
        -p "[{\"op\": \"replace\", \"path\": \"/subsets/0/ports/0/port\", \"value\": ${PORT[apiserver]}}]" >/dev/null || true
    fi
    sleep 0.5
  done
  die "the kubernetes Endpoints is not $NODE_IP:${PORT[apiserver]} (it is '${cur}')"
}

node_start() {
  local start=$SECONDS
  node_fix_kubernetes_endpoints
  node_images
  mkdir -p "$NODE_RUN/containerd" "$NODE_DIR/cni" "$NODE_DIR/dns" "$NODE_RUN/cni-ipam"
  touch "$NODE_DIR/enabled"
  local proxy_env=(HTTP_PROXY="$NODE_PROXY" HTTPS_PROXY="$NODE_PROXY" http_proxy="$NODE_PROXY"
    https_proxy="$NODE_PROXY" NO_PROXY="$NODE_CIDR,127.0.0.1,localhost" no_proxy="$NODE_CIDR,127.0.0.1,localhost")

  # --- containerd -----------------------------------------------------------------------------
  cat >"$NODE_DIR/cni/10-statecar.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "statecar-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$NODE_RUN/cni-ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false}
  ]
}
EOF
  cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_RUN/containerd/root"
state = "$NODE_RUN/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$NODE_SOCK"

[ttrpc]
  address = "$NODE_SOCK.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$NODE_SANDBOX_REF"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_RUN/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
    max_conf_num = 1
EOF
  # The shims put their sockets in /run/containerd/s whatever the config says; if this run
  # creates /run/containerd, node_cleanup removes what is left of it (empty directories only).
  # The same for the host paths CRI, CNI and kubelet use regardless of configuration.
  local hp
  for hp in /run/containerd /run/netns /var/lib/cni /var/log/pods /var/log/containers /var/lib/kubelet; do
    [ -e "$hp" ] || printf '%s\n' "$hp" >>"$NODE_DIR/created-host-dirs"
  done
  step "starting containerd (socket $NODE_SOCK)"
  launch containerd env "${proxy_env[@]}" "$(command -v containerd)" --config "$NODE_DIR/containerd.toml"
  # launch records env's pid; env execs containerd, so the pid is containerd's.
  start_daemon_checked containerd 60 node_ctr version || return $?
  local t
  for t in "$NODE_PAUSE_TAR" "$NODE_DIR/images/probe.tar"; do
    node_ctr images import "$t" >>"$LOGS/images.log" 2>&1 || fail_with_log "importing $t failed" "$LOGS/images.log"
  done
  info "images: $(node_ctr images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

  # --- DNS: dnsmasq on the bridge address, fed from Services ----------------------------------
  local dns_token="$NODE_DIR/dns.token"
  (umask 077 && node_token system:kube-proxy >"$dns_token")
  : >"$NODE_DIR/dns/services"
  step "starting dnsmasq on $NODE_IP:53 (no upstream servers)"
  launch dnsmasq "$(command -v dnsmasq)" --keep-in-foreground --conf-file=/dev/null \
    --user=root --group=root --pid-file= --log-facility=- \
    --no-resolv --no-hosts --no-poll --no-negcache --hostsdir="$NODE_DIR/dns" \
    --bind-interfaces --listen-address="$NODE_IP" --port=53 \
    --local=/cluster.local/ --domain-needed --bogus-priv
  start_daemon_checked dnsmasq 20 node_dns_listening || return $?
  launch dns-hosts python3 "$NODE_SRC/dns-hosts.py" "https://$NODE_IP:${PORT[apiserver]}" \
    "$PKI/ca.crt" "$dns_token" "$NODE_DIR/dns/services"

  # --- kubelet --------------------------------------------------------------------------------
  local d
  for d in /sys/fs/cgroup/*/; do
    [ -f "$d/cgroup.procs" ] && [ "$(basename "$d")" != unified ] || continue
    mkdir -p "$d$NODE_CGROUP"
    if [ -f "$d/cpuset.cpus" ]; then
      cat "$d/cpuset.cpus" >"$d$NODE_CGROUP/cpuset.cpus"
      cat "$d/cpuset.mems" >"$d$NODE_CGROUP/cpuset.mems"
    fi
  done
  printf 'nameserver %s\n' "$NODE_IP" >"$NODE_DIR/resolv.conf"
  node_write_kubeconfig "$NODE_DIR/kubelet.kubeconfig" "$(node_token "system:node:$NODE_NAME")"
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: ${PORT[kubelet]}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${PORT[kubelet-healthz]}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
cgroupsPerQOS: true
failSwapOn: false
oomScoreAdj: 0
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $NODE_DIR/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, imagefs.available: 1%}
volumePluginDir: $NODE_RUN/kubelet-plugins
maxPods: 50
serializeImagePulls: false
EOF
  step "starting kubelet (node $NODE_NAME, $NODE_IP)"
  launch kubelet env "${proxy_env[@]}" AWS_EC2_METADATA_DISABLED=true "$BIN_DIR/kubelet" \
    --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
    --root-dir="$NODE_RUN/kubelet" \
    --cert-dir="$NODE_DIR/kubelet-pki" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --container-runtime=remote \
    --container-runtime-endpoint="unix://$NODE_SOCK" \
    --runtime-request-timeout=2m \
    --v=1

  # --- kube-proxy -----------------------------------------------------------------------------
  node_write_kubeconfig "$NODE_DIR/kube-proxy.kubeconfig" "$(node_token system:kube-proxy)"
  step "starting kube-proxy (iptables mode)"
  launch kube-proxy env "${proxy_env[@]}" "$BIN_DIR/kube-proxy" \
    --kubeconfig="$NODE_DIR/kube-proxy.kubeconfig" \
    --hostname-override="$NODE_NAME" \
    --bind-address="$NODE_IP" \
    --cluster-cidr="$NODE_CIDR" \
    --proxy-mode=iptables \
    --healthz-bind-address="127.0.0.1:${PORT[kube-proxy-healthz]}" \
    --metrics-bind-address="127.0.0.1:${PORT[kube-proxy-metrics]}" \
    --nodeport-addresses="$NODE_IP/32" \
    --oom-score-adj=0 \
    --conntrack-max-per-core=0 --conntrack-min=0 \
    --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --profiling=false \
    --v=1

  # --- kube-scheduler -------------------------------------------------------------------------
  node_write_kubeconfig "$NODE_DIR/kube-scheduler.kubeconfig" "$(node_token system:kube-scheduler)"
  step "starting kube-scheduler"
  launch kube-scheduler env "${proxy_env[@]}" "$BIN_DIR/kube-scheduler" \
    --kubeconfig="$NODE_DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$NODE_DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$NODE_DIR/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="${PORT[scheduler]}" \
    --port=0 \
    --cert-dir="$NODE_DIR/scheduler-certs" \
    --leader-elect=false \
    --profiling=false \
    --v=1

  step "waiting for node $NODE_NAME to be Ready"
  local rc=0
  wait_for kubelet 120 node_ready || rc=$?
  [ "$rc" -eq 0 ] || fail_with_log "node $NODE_NAME not Ready" "$LOGS/kubelet.log"
  for d in kube-proxy kube-scheduler dns-hosts dnsmasq containerd; do
    pid_alive "$STATE_DIR/$d.pid" "$(node_binary "$d")" || fail_with_log "$d exited" "$LOGS/$d.log"
  done
  info "node Ready $((SECONDS - start)) s after the control plane"
}

node_dns_listening() { ss -Hlun "( sport = :53 )" 2>/dev/null | grep -qF "$NODE_IP:53"; }

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
