#!/usr/bin/env bash
# The user's journey, end to end, on a real single-node cluster (tests/cluster/up.sh --node):
#
#   1. the cluster is up; the statecar images (images/build.sh) and the test's Redis and tools
#      images are imported into its containerd (nothing is pulled); Redis runs in a pod with
#      its password in a Secret
#   2. `helm install` of charts/statecar, the operator becomes ready, `helm test` passes
#   3. a Dapr Component manifest (secretKeyRef to the password) is applied and becomes Ready
#   4. a Deployment of 2 replicas annotated dapr.io/enabled runs 2/2 with a `daprd` container;
#      from inside the app container, localhost:3500 serves save, get, an etag conflict (409)
#      and a transaction against Redis, and both replicas see the same state
#   5. the Component's redisDB changes with `kubectl apply`; both running sidecars switch within
#      2 s, with no restart
#   6. a pod without the annotation gets no sidecar; `helm uninstall` removes what the release
#      created and the app pods keep running and serving
#
# It prints a transcript with timings. On failure it prints the operator's and sidecars' logs,
# the events and the pod descriptions, and exits non-zero.
#
# Usage: tests/e2e/journey.sh [--keep]
#   --keep   leave the cluster, the release and the namespaces as they are at the end
# Environment:
#   STATECAR_CLUSTER_DIR   the node cluster's state dir (default ~/.cache/statecar/cluster-node;
#                          the control plane the other tests use is never touched). If it is not
#                          running it is started, and stopped again at the end.
#   STATECAR_RELEASE_DIR   where images/build.sh takes the binaries from (default target/release,
#                          built when missing; scripts/test.sh passes its debug build)
set -euo pipefail

keep=""
case "${1:-}" in
  --keep) keep=1 ;;
  "") ;;
  -h | --help)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
    ;;
  *)
    echo "journey.sh: unknown argument $1 (see --help)" >&2
    exit 2
    ;;
esac

repo="$(cd "$(dirname "$0")/../.." && pwd)"
here="$repo/tests/e2e"
cd "$repo"
export STATECAR_CLUSTER_DIR="${STATECAR_CLUSTER_DIR:-$HOME/.cache/statecar/cluster-node}"
if [ "$(realpath -m "$STATECAR_CLUSTER_DIR")" = "$(realpath -m "$HOME/.cache/statecar/cluster")" ]; then
  echo "journey.sh: refusing the default state dir $STATECAR_CLUSTER_DIR (other tests use it)" >&2
  exit 2
fi
unset KUBECONFIG STATECAR_NODE

release=statecar
sysns=statecar-system
ns=journey
app_id=orders
redis_password=journey-Pa55word # as in manifests/redis.yaml
work="$(mktemp -d)"

# ---- transcript -------------------------------------------------------------------------------
t0="$(date +%s.%N)"
step_t="$t0"
step_no=0
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
step() {
  local t
  t="$(now)"
  if [ "$step_no" -gt 0 ]; then printf '    (step %d took %s s)\n' "$step_no" "$(secs "$step_t" "$t")"; fi
  step_no=$((step_no + 1))
  step_t="$t"
  printf '\n[%7s s] %d. %s\n' "$(secs "$t0" "$t")" "$step_no" "$*"
}
say() { printf '    %s\n' "$*"; }
failed=""
fail() {
  failed=1
  printf '\nFAIL: %s\n' "$*" >&2
  exit 1
}
trap 'err_line=$LINENO' ERR

kc() { kubectl --kubeconfig "$KUBECONFIG" --request-timeout=30s "$@"; }
helm() { python3 "$repo/tests/helm.py" "$@"; } # the cluster of KUBECONFIG

# Polls CMD every 0.2 s until it succeeds or SECONDS pass; prints how long it took.
until_ok() { # SECONDS WHAT CMD...
  local limit=$1 what=$2 start
  shift 2
  start="$(now)"
  while ! "$@" >/dev/null 2>&1; do
    if awk -v a="$start" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
      fail "$what: not after ${limit} s"
    fi
    sleep 0.2
  done
  say "$what ($(secs "$start" "$(now)") s)"
}

dump() {
  [ -n "${KUBECONFIG:-}" ] || return 0
  echo
  echo "==================== diagnostics ===================="
  echo "---- pods"
  kc get pods -A -o wide 2>&1 || true
  echo "---- components"
  kc get components -A -o yaml 2>&1 | sed -n '1,120p' || true
  echo "---- events ($sysns, $ns)"
  kc get events -n "$sysns" --sort-by=.lastTimestamp 2>&1 | tail -n 40 || true
  kc get events -n "$ns" --sort-by=.lastTimestamp 2>&1 | tail -n 60 || true
  echo "---- pod descriptions"
  kc describe pods -n "$sysns" 2>&1 | tail -n 120 || true
  kc describe pods -n "$ns" 2>&1 | tail -n 200 || true
  echo "---- operator logs"
  kc logs -n "$sysns" -l app.kubernetes.io/component=operator --all-containers --prefix --tail=200 2>&1 || true
  echo "---- sidecar logs"
  kc logs -n "$ns" -l app=orders -c daprd --prefix --tail=100 2>&1 || true
  echo "---- kubelet log (tail)"
  tail -n 40 "$STATECAR_CLUSTER_DIR/logs/kubelet.log" 2>/dev/null || true
}

started_cluster=""
finish() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -z "$failed" ]; then
    printf '\nFAIL: step %d, the command at line %s of %s exited with an error\n' \
      "$step_no" "${err_line:-?}" "$0" >&2
  fi
  if [ "$rc" -ne 0 ]; then dump; fi
  if [ -z "$keep" ] && [ -n "${KUBECONFIG:-}" ]; then
    helm uninstall "$release" -n "$sysns" --ignore-not-found >/dev/null 2>&1 || true
    kc delete namespace "$ns" "$sysns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    if [ -n "$started_cluster" ]; then tests/cluster/down.sh >/dev/null 2>&1 || true; fi
  fi
  rm -rf "$work"
  if [ "$rc" -eq 0 ]; then
    printf '\n[%7s s] journey passed\n' "$(secs "$t0" "$(now)")"
  fi
  exit "$rc"
}
trap finish EXIT

# ---- helpers for the app's view ---------------------------------------------------------------
# curl from inside the app container of POD; prints the body, then the status code on a line
# of its own.
app_curl() { # POD curl-args...
  local pod=$1
  shift
  kc exec -n "$ns" "$pod" -c app -- curl -sS --max-time 10 -w '\n%{http_code}\n' "$@"
}
# Expects STATUS from `app_curl`; leaves the body in $body and the response headers in $headers.
expect() { # STATUS WHAT POD curl-args...
  local want=$1 what=$2 out code
  shift 2
  out="$(app_curl "$@" -D /dev/stderr 2>"$work/headers")" || fail "$what: curl failed: $out"
  code="$(printf '%s\n' "$out" | tail -n 1)"
  body="$(printf '%s\n' "$out" | sed '$d')"
  headers="$(cat "$work/headers")"
  [ "$code" = "$want" ] || fail "$what: HTTP $code, expected $want: $body"
  say "$what: HTTP $code ${body:+$body}"
}
state_url=http://localhost:3500/v1.0/state/statestore

redis_ip() { kc get pod -n "$ns" -l app=redis -o jsonpath='{.items[0].status.podIP}'; }
rcli() { # DB args...
  local db=$1
  shift
  REDISCLI_AUTH="$redis_password" redis-cli -h "$redis_host" -p 6379 -n "$db" --no-auth-warning "$@"
}
restarts() { kc get pods -n "$ns" -l app=orders -o jsonpath='{range .items[*]}{range .status.containerStatuses[*]}{.restartCount}{" "}{end}{end}'; }

# ---- 1. cluster, images, Redis ----------------------------------------------------------------
step "cluster: tests/cluster/up.sh --node"
if ! tests/cluster/up.sh --status >/dev/null 2>&1; then started_cluster=1; fi
KUBECONFIG="$(tests/cluster/up.sh --node | tail -n 1)"
export KUBECONFIG
until_ok 60 "node Ready" sh -c "kubectl --kubeconfig '$KUBECONFIG' get nodes -o jsonpath='{.items[0].status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"

# What a previous run left (--keep, or an interrupted run) goes first.
if kc get namespace "$ns" "$sysns" --ignore-not-found -o name | grep -q .; then
  helm uninstall "$release" -n "$sysns" --ignore-not-found --wait >/dev/null 2>&1 || true
  kc delete namespace "$ns" "$sysns" --ignore-not-found --timeout=120s >/dev/null
  say "removed namespaces $ns and $sysns left by an earlier run"
fi

step "images: images/build.sh, plus Redis and tools images from this host's binaries"
images/build.sh --out "$work/images" ${STATECAR_RELEASE_DIR:+--no-build} 2>&1 | sed 's/^/    /'
for tool in busybox curl redis-server redis-cli; do
  command -v "$tool" >/dev/null || fail "$tool is needed on this host (scripts/test.sh installs it)"
done
scripts/helm-deps.sh >/dev/null # the Helm SDK behind tests/helm.py, installed once
mk="tests/cluster/node/mkimage.py"
python3 "$mk" --libs "$work/images/e2e-redis.tar" statecar.invalid/e2e-redis:1.0 /usr/bin/redis-server \
  "$(command -v redis-server):/usr/bin/redis-server"
bb="$(command -v busybox)"
python3 "$mk" --libs --env PATH=/bin "$work/images/e2e-tools.tar" statecar.invalid/e2e-tools:1.0 /bin/sh \
  "$bb:/bin/busybox" "$bb:/bin/sh" "$bb:/bin/sleep" "$bb:/bin/cat" "$(command -v curl):/bin/curl"
tests/cluster/load-images.sh "$work"/images/*.tar | sed 's/^/    /'
version="$(python3 images/build.py --print-version)"

step "Redis in namespace $ns, password from a Secret"
kc create namespace "$ns" --dry-run=client -o yaml | kc apply -f - >/dev/null
kc apply -n "$ns" -f "$here/manifests/redis.yaml" | sed 's/^/    /'
until_ok 90 "redis pod ready" kc wait -n "$ns" --for=condition=Ready pod -l app=redis --timeout=1s
redis_host="$(redis_ip)"
[ "$(rcli 0 PING)" = PONG ] || fail "Redis at $redis_host does not answer PING with the password"
say "redis at $redis_host answers PING with the password from the Secret"

# ---- 2. helm install, helm test ---------------------------------------------------------------
step "helm install $release charts/statecar -n $sysns --create-namespace"
helm install "$release" charts/statecar -n "$sysns" --create-namespace \
  --set operator.image.repository=statecar/statecar-operator \
  --set sidecar.image.repository=statecar/statecar \
  2>&1 | sed -n '1,12p' | sed 's/^/    /'
say "images: statecar/statecar-operator:$version, statecar/statecar:$version (IfNotPresent, never pulled)"
until_ok 180 "operator Deployment available (2 replicas)" \
  kc rollout status -n "$sysns" deployment/statecar-operator --timeout=2s
kc get pods -n "$sysns" -o wide | sed 's/^/    /'

step "helm test $release"
helm test "$release" -n "$sysns" 2>&1 | sed 's/^/    /'

# ---- 3. the Component -------------------------------------------------------------------------
step "kubectl apply a Dapr Component (secretKeyRef to the Redis password)"
kc apply -n "$ns" -f "$here/manifests/statestore.yaml" | sed 's/^/    /'
until_ok 30 "Component Ready" kc wait -n "$ns" --for=condition=Ready component/statestore --timeout=1s
kc get components -n "$ns" | sed 's/^/    /'

# ---- 4. the app -------------------------------------------------------------------------------
step "a Deployment of 2 replicas annotated dapr.io/enabled"
kc apply -n "$ns" -f "$here/manifests/app.yaml" | sed 's/^/    /'
until_ok 120 "both replicas Ready (2/2)" \
  kc rollout status -n "$ns" deployment/orders --timeout=2s
kc get pods -n "$ns" -l app=orders -o wide | sed 's/^/    /'
mapfile -t pods < <(kc get pods -n "$ns" -l app=orders -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
[ "${#pods[@]}" -eq 2 ] || fail "expected 2 app pods, found ${#pods[@]}"
for p in "${pods[@]}"; do
  names="$(kc get pod -n "$ns" "$p" -o jsonpath='{.spec.containers[*].name}')"
  [ "$names" = "app daprd" ] || fail "pod $p has containers '$names', expected 'app daprd'"
  image="$(kc get pod -n "$ns" "$p" -o jsonpath='{.spec.containers[?(@.name=="daprd")].image}')"
  [ "$image" = "statecar/statecar:$version" ] || fail "pod $p: daprd image $image"
done
say "containers of each pod: app daprd (image statecar/statecar:$version)"
a="${pods[0]}"
b="${pods[1]}"

step "state from inside the app containers (localhost:3500)"
expect 204 "save order-1 (pod $a)" "$a" -X POST "$state_url" -H 'Content-Type: application/json' \
  -d '[{"key":"order-1","value":{"item":"book","qty":1}}]'
expect 200 "get order-1 (pod $b)" "$b" "$state_url/order-1"
[ "$body" = '{"item":"book","qty":1}' ] || fail "pod $b read $body"
etag="$(printf '%s\n' "$headers" | tr -d '\r' | awk 'tolower($1) == "etag:" { print $2 }')"
[ -n "$etag" ] || fail "no ETag header on the get"
say "ETag $etag"
expect 204 "save order-1 with etag $etag, first-write (pod $b)" "$b" -X POST "$state_url" \
  -H 'Content-Type: application/json' \
  -d "[{\"key\":\"order-1\",\"value\":{\"item\":\"book\",\"qty\":2},\"etag\":\"$etag\",\"options\":{\"concurrency\":\"first-write\"}}]"
expect 409 "save order-1 with the now stale etag $etag (pod $a)" "$a" -X POST "$state_url" \
  -H 'Content-Type: application/json' \
  -d "[{\"key\":\"order-1\",\"value\":{\"item\":\"book\",\"qty\":3},\"etag\":\"$etag\",\"options\":{\"concurrency\":\"first-write\"}}]"
expect 204 "transaction: upsert order-2, delete order-1 (pod $a)" "$a" -X POST "$state_url/transaction" \
  -H 'Content-Type: application/json' \
  -d '{"operations":[{"operation":"upsert","request":{"key":"order-2","value":{"item":"pen","qty":5}}},{"operation":"delete","request":{"key":"order-1"}}]}'
expect 200 "get order-2 (pod $b)" "$b" "$state_url/order-2"
[ "$body" = '{"item":"pen","qty":5}' ] || fail "pod $b read $body"
expect 204 "get order-1, deleted by the transaction (pod $b)" "$b" "$state_url/order-1"
stored="$(rcli 0 HGET "$app_id||order-2" data)"
[ "$stored" = '{"item":"pen","qty":5}' ] || fail "Redis db 0 has '$stored' for $app_id||order-2"
[ "$(rcli 0 EXISTS "$app_id||order-1")" = 0 ] || fail "Redis still has $app_id||order-1"
say "Redis db 0 holds $app_id||order-2 = $stored, and no $app_id||order-1"

step "gRPC from inside an app container (localhost:\$DAPR_GRPC_PORT, as the Dapr SDKs use)"
grpc_port="$(kc exec -n "$ns" "$b" -c app -- sh -c 'echo "$DAPR_GRPC_PORT"' | tr -d '\r')"
[ "$grpc_port" = 50001 ] || fail "the app container has DAPR_GRPC_PORT='$grpc_port', expected 50001"
# A GetState request framed by hand (curl speaks HTTP/2, not protobuf): store_name (field 1)
# "statestore", key (field 2) "order-2", behind gRPC's 5-byte length prefix.
kc exec -n "$ns" "$b" -c app -- sh -c "printf '\\000\\000\\000\\000\\025\\012\\012statestore\\022\\007order-2' |
  curl -sS --max-time 10 --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary @- http://localhost:$grpc_port/dapr.proto.runtime.v1.Dapr/GetState" >"$work/grpc.out" ||
  fail "the gRPC GetState call failed"
grep -a -q '{"item":"pen","qty":5}' "$work/grpc.out" ||
  fail "gRPC GetState of order-2 did not return the value: $(od -c "$work/grpc.out" | head -5)"
say "gRPC GetState order-2 on localhost:$grpc_port (pod $b): $(grep -a -o '{"item":"pen","qty":5}' "$work/grpc.out")"

# ---- 5. hot reload ----------------------------------------------------------------------------
step "kubectl apply the Component with redisDB 1: both sidecars switch, no restart"
before="$(restarts)"
# Each replica saves switch-<pod> every 0.1 s; the time from the apply to the first of its saves
# that lands in db 1 is how long that sidecar took to switch.
for p in "${pods[@]}"; do
  kc exec -n "$ns" "$p" -c app -- sh -c "i=0; while [ \$i -lt 80 ]; do
      curl -s -o /dev/null -X POST $state_url -H 'Content-Type: application/json' \
        -d '[{\"key\":\"switch-$p\",\"value\":'\$i'}]'; i=\$((i + 1)); sleep 0.1; done" \
    >/dev/null 2>&1 &
done
until_ok 10 "both replicas saving into db 0" sh -c \
  "[ \"\$(REDISCLI_AUTH='$redis_password' redis-cli -h $redis_host -n 0 --no-auth-warning EXISTS '$app_id||switch-$a' '$app_id||switch-$b')\" = 2 ]"
[ "$(rcli 1 DBSIZE)" = 0 ] || fail "db 1 is not empty before the change"
kc apply -n "$ns" -f "$here/manifests/statestore-db1.yaml" | sed 's/^/    /'
applied="$(now)"
declare -A switched=()
while [ "${#switched[@]}" -lt 2 ]; do
  for p in "${pods[@]}"; do
    if [ -z "${switched[$p]:-}" ] && [ "$(rcli 1 EXISTS "$app_id||switch-$p")" = 1 ]; then
      switched[$p]="$(secs "$applied" "$(now)")"
      say "pod $p: saves land in db 1, ${switched[$p]} s after the apply returned"
    fi
  done
  if awk -v a="$applied" -v b="$(now)" 'BEGIN { exit !(b - a > 10) }'; then
    fail "the sidecars did not switch to db 1 within 10 s (switched: ${!switched[*]})"
  fi
  sleep 0.05
done
for p in "${pods[@]}"; do
  awk -v s="${switched[$p]}" 'BEGIN { exit !(s <= 2.0) }' || fail "pod $p took ${switched[$p]} s (> 2 s) to switch"
done
wait
after="$(restarts)"
[ "$before" = "$after" ] && [ -z "$(echo "$after" | tr -d '0 ')" ] ||
  fail "container restarts changed: before '$before', after '$after'"
say "restart counts: $after(unchanged)"
expect 200 "get switch-$a from db 1 (pod $b)" "$b" "$state_url/switch-$a"

# ---- 6. no sidecar without the annotation; helm uninstall -------------------------------------
step "a pod without dapr.io/enabled gets no sidecar"
kc apply -n "$ns" -f "$here/manifests/plain.yaml" | sed 's/^/    /'
names="$(kc get pod -n "$ns" plain -o jsonpath='{.spec.containers[*].name}')"
[ "$names" = app ] || fail "pod plain has containers '$names'"
until_ok 60 "pod plain Ready, containers: $names" kc wait -n "$ns" --for=condition=Ready pod/plain --timeout=1s

step "helm uninstall $release: the release's objects go, the app keeps running"
helm uninstall "$release" -n "$sysns" --wait 2>&1 | sed 's/^/    /'
left=""
for kind in deployments services serviceaccounts secrets configmaps roles rolebindings poddisruptionbudgets; do
  out="$(kc get "$kind" -n "$sysns" -l app.kubernetes.io/instance="$release" -o name 2>/dev/null || true)"
  left="$left$out"
done
for kind in clusterroles clusterrolebindings mutatingwebhookconfigurations validatingwebhookconfigurations; do
  out="$(kc get "$kind" -l app.kubernetes.io/instance="$release" -o name 2>/dev/null || true)"
  left="$left$out"
done
[ -z "$left" ] || fail "left behind after helm uninstall: $left"
say "no Deployment, Service, ServiceAccount, RBAC or webhook configuration of the release is left"
until_ok 60 "operator pods gone" sh -c "[ -z \"\$(kubectl --kubeconfig '$KUBECONFIG' get pods -n $sysns -o name)\" ]"
# What the operator made itself stays with the namespace: its certificate Secret (so a
# reinstall keeps the CA) and its leader Lease.
remaining="$(kc get deployments,replicasets,pods,services,serviceaccounts,secrets,configmaps,roles,rolebindings,poddisruptionbudgets,leases \
  -n "$sysns" -o name | grep -v -E '^(serviceaccount/default|secret/default-token-.*|configmap/kube-root-ca.crt)$' | sort | tr '\n' ' ')"
[ "$remaining" = "lease.coordination.k8s.io/statecar-operator secret/statecar-webhook-tls " ] ||
  fail "unexpected objects in $sysns after helm uninstall: $remaining"
say "left in $sysns: only the operator's own ${remaining% }"
kc get crd components.dapr.io -o name >/dev/null ||
  fail "the CRD is gone; Helm keeps CRDs from crds/ so Components are not deleted with the release"
say "the CRD stays (Helm never deletes CRDs from crds/, so users' Components survive)"
sleep 3
after="$(restarts)"
[ -z "$(echo "$after" | tr -d '0 ')" ] || fail "app pods restarted after the uninstall: $after"
phases="$(kc get pods -n "$ns" -l app=orders -o jsonpath='{.items[*].status.phase}')"
[ "$phases" = "Running Running" ] || fail "app pods are '$phases' after the uninstall"
say "app pods: $phases, restart counts: $after"
expect 204 "save after the uninstall, on the last configuration (pod $a)" "$a" -X POST "$state_url" \
  -H 'Content-Type: application/json' -d '[{"key":"after-uninstall","value":1}]'
[ "$(rcli 1 EXISTS "$app_id||after-uninstall")" = 1 ] || fail "the save did not reach Redis db 1"
say "Redis db 1 holds $app_id||after-uninstall"
printf '    (step %d took %s s)\n' "$step_no" "$(secs "$step_t" "$(now)")"
