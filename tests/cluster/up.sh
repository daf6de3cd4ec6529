#!/usr/bin/env bash
# Starts (or reuses) a local Kubernetes 1.20 control plane for the integration tests: etcd,
# kube-apiserver and kube-controller-manager as plain processes on free loopback ports. No
# kubelet and no container runtime, so pods are accepted by the API server but stay Pending.
# With --node it is a single-node cluster that runs pods (tests/cluster/node.sh).
#
# Progress goes to stderr; the last line of stdout is the absolute path of a kubeconfig for the
# cluster, so `export KUBECONFIG="$(tests/cluster/up.sh)"` works.
#
#   tests/cluster/up.sh            start or reuse the cluster
#   tests/cluster/up.sh --node     the same plus a node (containerd, kubelet, kube-proxy,
#                                  kube-scheduler, bridge statecar0 on 10.244.0.0/24, dnsmasq);
#                                  the API server then listens on 10.244.0.1, not 127.0.0.1
#   tests/cluster/up.sh --status   exit 0 (printing the kubeconfig path) if the local cluster is
#                                  running and ready, else 1; never starts anything
#   tests/cluster/up.sh --restart-apiserver
#                                  stop the running cluster's kube-apiserver and start it again
#                                  on the same port (for restart tests); fails if not running
#   tests/cluster/up.sh --build-only [--node]
#                                  only install and build the binaries (e.g. to fill a CI cache)
#
#   KUBECONFIG            if set and its cluster answers /readyz, that cluster is used as is
#                         (not with --node)
#   STATECAR_NODE         1: same as --node
#   STATECAR_CACHE        binary cache root (default ~/.cache/statecar); binaries live in
#                         $STATECAR_CACHE/k8s/1.20.2/
#   STATECAR_CLUSTER_DIR  state dir: pid files, logs, certs, etcd data, kubeconfig
#                         (default ~/.cache/statecar/cluster)
#   STATECAR_PAUSE_TAR    pod sandbox image for --node (default: target/images/pause-*.tar if
#                         built, else a pause image built from tests/cluster/node/pause.c)
#
# See tests/cluster/README.md. Stop with tests/cluster/down.sh.
set -euo pipefail

status_only=""
restart_apiserver=""
build_only=""
node=""
case "${STATECAR_NODE:-}" in "" | 0) ;; *) node=1 ;; esac
for arg in "$@"; do
  case "$arg" in
    --status) status_only=1 ;;
    --restart-apiserver) restart_apiserver=1 ;;
    --node) node=1 ;;
    --build-only) build_only=1 ;;
    -h | --help)
      sed -n '2,32p' "$0"
      exit 0
      ;;
    *)
      printf 'usage: %s [--node] [--status | --restart-apiserver | --build-only]\n' "$0" >&2
      exit 2
      ;;
  esac
done

K8S_VERSION=1.20.2
CACHE_ROOT="${STATECAR_CACHE:-$HOME/.cache/statecar}"
BIN_DIR="$CACHE_ROOT/k8s/$K8S_VERSION"
STATE_DIR="${STATECAR_CLUSTER_DIR:-$HOME/.cache/statecar/cluster}"
DEBIAN_MIRROR="${STATECAR_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SA_ISSUER=https://kubernetes.default.svc.cluster.local

step() { printf '==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Prints the last lines of a log file to stderr, then fails.
fail_with_log() {
  local msg=$1 log=$2
  printf 'error: %s\n' "$msg" >&2
  if [ -f "$log" ]; then
    printf -- '---- last 40 lines of %s ----\n' "$log" >&2
    tail -n 40 "$log" >&2
    printf -- '---- end of %s ----\n' "$log" >&2
  fi
  exit 1
}

# ---------------------------------------------------------------------------------------------
# 1. An existing cluster named by KUBECONFIG wins.
# ---------------------------------------------------------------------------------------------
if [ -z "$status_only$restart_apiserver$build_only$node" ] && [ -n "${KUBECONFIG:-}" ] && command -v kubectl >/dev/null 2>&1 &&
  kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
  printf '==> using the existing cluster from KUBECONFIG=%s (/readyz answers)\n' "$KUBECONFIG" >&2
  printf '%s\n' "$KUBECONFIG"
  exit 0
fi

command -v kubectl >/dev/null 2>&1 || die "kubectl is required (https://kubernetes.io/docs/tasks/tools/)"

if [ -n "$status_only" ] && [ ! -f "$STATE_DIR/kubeconfig" ]; then
  printf 'not running (no %s)\n' "$STATE_DIR/kubeconfig" >&2
  exit 1
fi
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"
mkdir -p "$CACHE_ROOT/k8s"
CACHE_ROOT="$(cd "$CACHE_ROOT" && pwd -P)"
BIN_DIR="$CACHE_ROOT/k8s/$K8S_VERSION"
KCFG="$STATE_DIR/kubeconfig"
PKI="$STATE_DIR/pki"
LOGS="$STATE_DIR/logs"
# shellcheck source=tests/cluster/node.sh
. "$(dirname "$0")/node.sh"
# The API server listens on the node's bridge address with --node (pods must reach it), else on
# loopback.
if [ -n "$restart_apiserver" ] && [ -f "$NODE_DIR/enabled" ]; then node=1; fi
API_HOST=127.0.0.1
if [ -n "$node" ]; then API_HOST=$NODE_IP; fi

kc() { kubectl --kubeconfig "$KCFG" --request-timeout=5s "$@"; }

# pid_alive PIDFILE BINARY: the pid file names a live process running BINARY for this state dir.
pid_alive() {
  local pid cmd
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cmd="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  [[ "$(basename -- "${cmd%%$'\n'*}")" == "$2" && "$cmd" == *"$STATE_DIR"* ]]
}

all_alive() {
  pid_alive "$STATE_DIR/etcd.pid" etcd &&
    pid_alive "$STATE_DIR/kube-apiserver.pid" kube-apiserver &&
    pid_alive "$STATE_DIR/kube-controller-manager.pid" kube-controller-manager || return 1
  if [ -n "$node" ] || [ -f "$NODE_DIR/enabled" ]; then node_all_alive; fi
}

# Stops whatever the pid files point at (only processes of this state dir) and removes them.
stop_all() {
  local name pid i
  # The node's daemons and pods first; its bridge, iptables chains, mounts etc. after the
  # control plane (which listens on the bridge address with --node).
  node_stop
  for name in kube-controller-manager kube-apiserver etcd; do
    if pid_alive "$STATE_DIR/$name.pid" "$name"; then
      pid="$(cat "$STATE_DIR/$name.pid")"
      kill "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        pid_alive "$STATE_DIR/$name.pid" "$name" || break
        sleep 0.2
      done
      if pid_alive "$STATE_DIR/$name.pid" "$name"; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$STATE_DIR/$name.pid"
  done
  node_cleanup
}

HEARTBEAT_PID=""
STARTED=""
on_exit() {
  local rc=$?
  if [ -n "$HEARTBEAT_PID" ]; then kill "$HEARTBEAT_PID" 2>/dev/null || true; fi
  # A failed start leaves no half-started cluster behind (the logs stay).
  if [ "$rc" -ne 0 ] && [ -n "$STARTED" ]; then stop_all; fi
}
trap on_exit EXIT

# running_and_ready TRIES: all three processes are alive and /readyz answers (a busy machine
# gets TRIES chances, 5 s timeout each, before a running cluster counts as broken).
running_and_ready() {
  local i
  for ((i = 0; i < $1; i++)); do
    all_alive && [ -f "$KCFG" ] || return 1
    kc get --raw /readyz >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}

if [ -n "$status_only" ]; then
  if running_and_ready 3; then
    printf 'running (state dir %s)\n' "$STATE_DIR" >&2
    printf '%s\n' "$KCFG"
    exit 0
  fi
  printf 'not running (state dir %s)\n' "$STATE_DIR" >&2
  exit 1
fi

if [ -n "$build_only" ]; then
  :
else
# One up.sh at a time per state dir. fd 9 is closed for every daemon started below, so the lock
# is released when this script exits.
touch "$STATE_DIR/.statecar-cluster"
exec 9>"$STATE_DIR/.lock"
flock 9

# ---------------------------------------------------------------------------------------------
# Already running? Then there is nothing to do.
# ---------------------------------------------------------------------------------------------
if [ -n "$restart_apiserver" ]; then
  running_and_ready 6 || die "--restart-apiserver: the cluster in $STATE_DIR is not running"
elif running_and_ready 6; then
  step "cluster already running (state dir $STATE_DIR)"
  printf '%s\n' "$KCFG"
  exit 0
fi
# Anything half-running or stale pid files: start over cleanly.
[ -n "$restart_apiserver" ] || stop_all
fi

# ---------------------------------------------------------------------------------------------
# 2. Binaries: etcd from Debian, kube-apiserver and kube-controller-manager built once from
#    Debian's kubernetes 1.20 source package and cached.
# ---------------------------------------------------------------------------------------------
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

apt_install() {
  [ "$#" -gt 0 ] || return 0
  local log="$CACHE_ROOT/k8s/apt.log"
  step "installing $* (Debian packages)"
  if ! { as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@"; } >"$log" 2>&1; then
    fail_with_log "apt-get install $* failed" "$log"
  fi
}

if ! command -v etcd >/dev/null 2>&1; then
  # Installing etcd-server may start a system etcd on 2379/2380; this cluster uses its own ports.
  apt_install etcd-server
fi
command -v openssl >/dev/null 2>&1 || apt_install openssl
if [ -n "$node" ] && [ -z "$build_only" ]; then node_packages; fi

CONTROL_PLANE_BINS=(kube-apiserver kube-controller-manager)
NODE_BINS=(kube-scheduler kubelet kube-proxy)

# missing_binaries [NAME...]: prints the names (default: all five) not in the cache.
missing_binaries() {
  local b
  [ "$#" -gt 0 ] || set -- "${CONTROL_PLANE_BINS[@]}" "${NODE_BINS[@]}"
  for b in "$@"; do [ -x "$BIN_DIR/$b" ] || printf '%s\n' "$b"; done
}

# The binaries this run needs: the control plane's, plus the node's with --node.
binaries_present() {
  if [ -n "$node" ]; then
    [ -z "$(missing_binaries)" ]
  else
    [ -z "$(missing_binaries "${CONTROL_PLANE_BINS[@]}")" ]
  fi
}

build_binaries() {
  local work="$CACHE_ROOT/k8s/build-$K8S_VERSION"
  local need=() p b
  for p in golang-go rsync dpkg-dev make golang-github-modern-go-reflect2-dev debian-archive-keyring; do
    pkg_installed "$p" || need+=("$p")
  done
  apt_install "${need[@]}"
  # Debian's Go (1.19) is the one this recipe is known to work with, whatever else is on PATH.
  export PATH="/usr/lib/go/bin:$PATH"

  local src=""
  if [ -f "$work/.prepared" ]; then src="$(cat "$work/.prepared")"; fi
  if [ -z "$src" ] || [ ! -d "$src" ]; then
    rm -rf "$work"
    mkdir -p "$work/apt/lists/partial" "$work/apt/empty" "$work/apt/cache/archives/partial"
    step "fetching kubernetes source (Debian source package, ~34 MB)"
    # A private apt configuration with a deb-src entry, so the system's sources stay untouched.
    printf 'deb-src [signed-by=%s] %s bookworm main\n' "$DEBIAN_KEYRING" "$DEBIAN_MIRROR" >"$work/apt/sources.list"
    local aptopts=(
      -o "Dir::Etc::SourceList=$work/apt/sources.list"
      -o "Dir::Etc::SourceParts=$work/apt/empty"
      -o "Dir::State::Lists=$work/apt/lists"
      -o "Dir::Cache=$work/apt/cache"
      -o "APT::Sandbox::User=root"
    )
    if ! { apt-get "${aptopts[@]}" update &&
      (cd "$work" && apt-get "${aptopts[@]}" source kubernetes); } >"$work/fetch.log" 2>&1; then
      fail_with_log "fetching the kubernetes source package failed" "$work/fetch.log"
    fi
    src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)"
    if [ -z "$src" ] || [ ! -f "$src/Makefile" ]; then
      fail_with_log "no kubernetes source tree after apt-get source" "$work/fetch.log"
    fi
    info "source: $(basename "$src")"

    step "replacing vendored reflect2 with Debian's 1.0.2 (Go 1.19 fix)"
    local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [ -d "$r2" ] || die "$r2 missing (package golang-github-modern-go-reflect2-dev)"
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    cp -rL "$r2" "$src/vendor/github.com/modern-go/reflect2"
    rm -f "$src/vendor/github.com/modern-go/reflect2/go.mod"
    printf '%s\n' "$src" >"$work/.prepared"
  fi

  # Version stamp (the upstream v1.20.2 commit), so the build never asks git.
  cat >"$work/version.env" <<EOF
KUBE_GIT_COMMIT='faecb196815e248d3ecfb03c680a4507229c2a56'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v$K8S_VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
EOF

  # Whatever is missing of all five is built in one go, so a cold cache is filled by one build
  # whether or not this run needs the node.
  local what=() names=()
  mapfile -t names < <(missing_binaries)
  for b in "${names[@]}"; do what+=("cmd/$b"); done
  step "building ${names[*]} (all five: 8-15 min on 2 cores)"
  info "log: $work/build.log"
  local start=$SECONDS
  (
    n=0
    while sleep 10; do
      n=$((n + 10))
      if ((n % 60 == 0)); then info "still building ($n s)"; fi
    done
  ) 8>&- 9>&- &
  HEARTBEAT_PID=$!
  if ! (
    cd "$src"
    exec env CGO_ENABLED=0 GOPROXY=off GOFLAGS= GOCACHE="$work/go-build" \
      KUBE_GIT_VERSION_FILE="$work/version.env" \
      make WHAT="${what[*]}"
  ) >"$work/build.log" 2>&1; then
    fail_with_log "building kubernetes failed" "$work/build.log"
  fi
  kill "$HEARTBEAT_PID" 2>/dev/null || true
  HEARTBEAT_PID=""
  info "built in $((SECONDS - start)) s"

  mkdir -p "$BIN_DIR"
  for b in "${names[@]}"; do
    [ -x "$src/_output/bin/$b" ] || fail_with_log "$b not found after the build" "$work/build.log"
    cp "$src/_output/bin/$b" "$BIN_DIR/.$b.tmp.$$"
    chmod 0755 "$BIN_DIR/.$b.tmp.$$"
    mv -f "$BIN_DIR/.$b.tmp.$$" "$BIN_DIR/$b"
  done
  if [ "${STATECAR_KEEP_BUILD:-}" != 1 ]; then
    # The tree and Go build cache are a few GB of small files: delete them in the background.
    local trash="$work.deleting.$$"
    mv "$work" "$trash"
    (rm -rf "$trash") </dev/null >/dev/null 2>&1 8>&- 9>&- &
  fi
  step "cached ${names[*]} in $BIN_DIR"
}

if ! binaries_present; then
  exec 8>"$CACHE_ROOT/k8s/.build.lock"
  flock 8
  binaries_present || build_binaries
  exec 8>&-
fi
if [ -n "$build_only" ]; then
  step "binaries cached in $BIN_DIR: $(cd "$BIN_DIR" && ls | tr '\n' ' ')"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# 3. Certificates, keys and the admin token (created once, then reused).
# ---------------------------------------------------------------------------------------------
mkdir -p "$PKI" "$LOGS"
chmod 0700 "$PKI"
# The node's pods reach the API server at the bridge address: older certificates lack it.
if [ -n "$node" ] && [ -s "$PKI/apiserver.crt" ] &&
  ! openssl x509 -in "$PKI/apiserver.crt" -noout -text 2>/dev/null | grep -q "IP Address:$NODE_IP\b"; then
  rm -f "$PKI/apiserver.crt"
fi
if [ ! -s "$PKI/ca.crt" ] || [ ! -s "$PKI/ca.key" ] || [ ! -s "$PKI/apiserver.crt" ] ||
  [ ! -s "$PKI/apiserver.key" ] || [ ! -s "$PKI/sa.key" ] || [ ! -s "$PKI/sa.pub" ]; then
  step "generating CA, apiserver certificate and service-account keys in $PKI"
  (
    set -e
    cd "$PKI"
    umask 077
    cat >openssl.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = statecar-local-ca
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.0.0.1, IP:10.96.0.1, IP:10.244.0.1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
EOF
    openssl genrsa -out ca.key 2048
    openssl req -x509 -new -key ca.key -config openssl.cnf -extensions ca -days 3650 -out ca.crt
    openssl genrsa -out apiserver.key 2048
    openssl req -new -key apiserver.key -subj /CN=kube-apiserver -out apiserver.csr
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile openssl.cnf -extensions server -out apiserver.crt
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
    rm -f apiserver.csr ca.srl
  ) >"$LOGS/pki.log" 2>&1 || fail_with_log "generating certificates failed" "$LOGS/pki.log"
fi
if [ ! -s "$PKI/tokens.csv" ]; then
  (umask 077 && printf '%s,statecar-admin,statecar-admin,"system:masters"\n' "$(openssl rand -hex 32)" >"$PKI/tokens.csv")
fi
ADMIN_TOKEN="$(grep ',statecar-admin,statecar-admin,' "$PKI/tokens.csv" | head -n 1 | cut -d, -f1)"
if [ -n "$node" ]; then node_pki; fi

# ---------------------------------------------------------------------------------------------
# Ports: reuse the previous ones when still free (stable kubeconfig), else pick free ones.
# ---------------------------------------------------------------------------------------------
port_in_use() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
  if [ "$API_HOST" != 127.0.0.1 ] && (exec 3<>"/dev/tcp/$API_HOST/$1") 2>/dev/null; then return 0; fi
  # Any socket on the port other than TIME-WAIT leftovers (which do not block a listener).
  local socks=""
  if command -v ss >/dev/null 2>&1; then
    socks="$(ss -Htan "( sport = :$1 )" 2>/dev/null | grep -v TIME-WAIT || true)"
  fi
  [ -n "$socks" ]
}

declare -A PORT=()
pick_ports() {
  local name p taken names=(etcd-client etcd-peer apiserver controller-manager)
  if [ -n "$node" ]; then names+=(kubelet kubelet-healthz kube-proxy-healthz kube-proxy-metrics scheduler); fi
  for name in "${names[@]}"; do
    p="${PORT[$name]:-}"
    if [ -z "$p" ] || port_in_use "$p"; then
      while :; do
        p=$((20000 + RANDOM % 12000))
        taken=" ${PORT[*]} "
        [[ "$taken" == *" $p "* ]] && continue
        port_in_use "$p" || break
      done
    fi
    PORT[$name]=$p
  done
  local tmp="$STATE_DIR/.ports.$$"
  for name in "${!PORT[@]}"; do printf '%s=%s\n' "$name" "${PORT[$name]}"; done >"$tmp"
  mv -f "$tmp" "$STATE_DIR/ports"
}

if [ -f "$STATE_DIR/ports" ]; then
  while IFS='=' read -r k v; do
    if [[ "$k" =~ ^[a-z-]+$ && "$v" =~ ^[0-9]+$ ]]; then PORT[$k]=$v; fi
  done <"$STATE_DIR/ports"
fi

write_kubeconfig() {
  local tmp="$STATE_DIR/.kubeconfig.$$"
  (
    umask 077
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: statecar-local
  cluster:
    server: https://$API_HOST:${PORT[apiserver]}
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: statecar-admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: statecar-local
  context:
    cluster: statecar-local
    user: statecar-admin
    namespace: default
current-context: statecar-local
EOF
  )
  mv -f "$tmp" "$KCFG"
}

# launch NAME CMD...: starts a daemon in its own session, detached from this script's stdio.
launch() {
  local name=$1
  shift
  local log="$LOGS/$name.log"
  if [ -f "$log" ]; then mv -f "$log" "$log.prev"; fi
  setsid "$@" </dev/null >"$log" 2>&1 8>&- 9>&- &
  printf '%s\n' "$!" >"$STATE_DIR/$name.pid"
}

# child_running PIDFILE: the process just launched still runs (whatever it has exec'd so far).
child_running() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

# wait_for NAME SECONDS CHECK...: polls CHECK until it succeeds; fails if the daemon dies.
wait_for() {
  local name=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  while ! "$@" >/dev/null 2>&1; do
    # Until setsid (and env) have exec'd the daemon, the child does not look like it yet.
    pid_alive "$STATE_DIR/$name.pid" "$name" || child_running "$STATE_DIR/$name.pid" || return 2
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

port_open() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1"
}

etcd_healthy() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "GET /health HTTP/1.0\r\n\r\n" >&3; grep -q "\"health\":\"true\"" <&3' _ "${PORT[etcd-client]}"
}

# Returns 0 when up, 3 when a port was taken meanwhile (retry with other ports); exits otherwise.
start_daemon_checked() {
  local name=$1 secs=$2
  shift 2
  local rc=0
  wait_for "$name" "$secs" "$@" || rc=$?
  [ "$rc" -eq 0 ] && return 0
  if grep -q 'address already in use' "$LOGS/$name.log" 2>/dev/null; then return 3; fi
  if [ "$rc" -eq 2 ]; then
    fail_with_log "$name exited during startup" "$LOGS/$name.log"
  fi
  fail_with_log "$name not ready after ${secs}s" "$LOGS/$name.log"
}

launch_apiserver() {
  # With the node: on the bridge address, advertised there (the `kubernetes` Service's endpoint),
  # webhooks called at endpoint IPs, and a client certificate for kubelet (logs, exec).
  local extra=(--advertise-address=10.0.0.1)
  if [ -n "$node" ]; then
    extra=(--advertise-address="$NODE_IP" --enable-aggregator-routing=true
      --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
      --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
      --kubelet-preferred-address-types=InternalIP)
  fi
  step "starting kube-apiserver on https://$API_HOST:${PORT[apiserver]}"
  launch kube-apiserver "$BIN_DIR/kube-apiserver" \
    --bind-address="$API_HOST" \
    --secure-port="${PORT[apiserver]}" \
    --insecure-port=0 \
    "${extra[@]}" \
    --etcd-servers="http://127.0.0.1:${PORT[etcd-client]}" \
    --cert-dir="$PKI" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --token-auth-file="$PKI/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer="$SA_ISSUER" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-key-file="$PKI/sa.pub" \
    --api-audiences="$SA_ISSUER" \
    --service-cluster-ip-range=10.96.0.0/12 \
    --allow-privileged=true \
    --profiling=false \
    --v=1
}

start_cluster() {
  if [ -n "$node" ]; then node_network_up; fi
  pick_ports
  write_kubeconfig
  info "ports: etcd ${PORT[etcd-client]}/${PORT[etcd-peer]}, apiserver ${PORT[apiserver]}, controller-manager ${PORT[controller-manager]}"

  step "starting etcd on 127.0.0.1:${PORT[etcd-client]}"
  local peer="http://127.0.0.1:${PORT[etcd-peer]}" client="http://127.0.0.1:${PORT[etcd-client]}"
  launch etcd "$(command -v etcd)" \
    --name statecar \
    --data-dir "$STATE_DIR/etcd" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "statecar=$peer" --initial-cluster-state new \
    --initial-cluster-token "statecar-$$" \
    --logger zap --log-outputs stderr
  start_daemon_checked etcd 60 etcd_healthy || return $?

  launch_apiserver
  start_daemon_checked kube-apiserver 120 kc get --raw /readyz || return $?

  step "starting kube-controller-manager"
  launch kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig="$KCFG" \
    --authentication-kubeconfig="$KCFG" \
    --authorization-kubeconfig="$KCFG" \
    --authentication-skip-lookup=true \
    --bind-address=127.0.0.1 \
    --secure-port="${PORT[controller-manager]}" \
    --port=0 \
    --cert-dir="$STATE_DIR/controller-manager-certs" \
    --controllers='*,-nodeipam' \
    --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --profiling=false \
    --v=1
  start_daemon_checked kube-controller-manager 60 port_open "${PORT[controller-manager]}" || return $?
}

sa_has_token() {
  [ -n "$(kc -n default get serviceaccount default -o 'jsonpath={.secrets[0].name}' 2>/dev/null)" ]
}

if [ -n "$restart_apiserver" ]; then
  start=$SECONDS
  step "stopping kube-apiserver"
  pid="$(cat "$STATE_DIR/kube-apiserver.pid")"
  kill "$pid" 2>/dev/null || true
  # It drains open watches for a long time; 5 s of grace, then it is killed.
  for ((i = 0; i < 25; i++)); do
    pid_alive "$STATE_DIR/kube-apiserver.pid" kube-apiserver || break
    sleep 0.2
  done
  if pid_alive "$STATE_DIR/kube-apiserver.pid" kube-apiserver; then kill -9 "$pid" 2>/dev/null || true; fi
  sleep 0.2
  launch_apiserver
  rc=0
  start_daemon_checked kube-apiserver 120 kc get --raw /readyz || rc=$?
  [ "$rc" -eq 0 ] || die "kube-apiserver could not take its port ${PORT[apiserver]} back"
  step "kube-apiserver restarted in $((SECONDS - start)) s"
  printf '%s\n' "$KCFG"
  exit 0
fi

start=$SECONDS
STARTED=1
for attempt in 1 2 3; do
  rc=0
  start_cluster || rc=$?
  [ "$rc" -eq 0 ] && break
  info "a port was taken while starting (attempt $attempt); retrying with other ports"
  stop_all
  PORT=()
  [ "$attempt" -lt 3 ] || die "could not find free ports"
done

step "waiting for the default service account and its token"
rc=0
wait_for kube-controller-manager 120 sa_has_token || rc=$?
if [ "$rc" -ne 0 ]; then
  fail_with_log "no token for serviceaccount default/default" "$LOGS/kube-controller-manager.log"
fi
# A server-side dry run goes through admission (service account included) without creating a pod.
ok=""
for _ in $(seq 1 20); do
  if kc -n default run statecar-cluster-check --image=statecar.invalid/check --restart=Never \
    --dry-run=server -o name >/dev/null 2>"$LOGS/dry-run.log"; then
    ok=1
    break
  fi
  sleep 1
done
[ -n "$ok" ] || fail_with_log "the API server does not accept pods" "$LOGS/dry-run.log"
if [ -n "$node" ]; then node_start; fi
kc get ns >&2
if [ -n "$node" ]; then kc get nodes -o wide >&2; fi
step "cluster ready in $((SECONDS - start)) s (state dir $STATE_DIR, logs in $LOGS)"
printf '%s\n' "$KCFG"
