#!/usr/bin/env bash
# Checks that the local control plane from tests/cluster/up.sh can do what the operator tests
# need: pods are accepted (service-account admission works; they stay Pending, there is no
# kubelet) and a mutating admission webhook at https://127.0.0.1:PORT is called over TLS and its
# JSONPatch applied. Needs python3 and openssl. Leaves nothing behind.
#
# Usage: tests/cluster/selfcheck.sh [KUBECONFIG]   (default: $KUBECONFIG, else runs up.sh)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
kcfg="${1:-${KUBECONFIG:-}}"
if [ -z "$kcfg" ]; then kcfg="$("$here/up.sh" | tail -n 1)"; fi
kc() { kubectl --kubeconfig "$kcfg" --request-timeout=10s "$@"; }

tmp="$(mktemp -d)"
id="statecar-selfcheck-$$"
hook_pid=""
cleanup() {
  kc delete mutatingwebhookconfiguration "$id" --ignore-not-found >/dev/null 2>&1 || true
  kc -n default delete pod "$id-plain" "$id-hooked" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [ -n "$hook_pid" ]; then kill "$hook_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

pod_yaml() { # NAME [LABEL]
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels: {statecar-selfcheck: "${2:-plain}"}
spec:
  containers:
  - name: app
    image: statecar.invalid/app:1
EOF
}

echo "==> creating a pod"
pod_yaml "$id-plain" | kc -n default create -f - >/dev/null
sa="$(kc -n default get pod "$id-plain" -o 'jsonpath={.spec.serviceAccountName}:{.status.phase}')"
[ "$sa" = "default:Pending" ] || { echo "unexpected pod state: $sa" >&2; exit 1; }
kc -n default get pod "$id-plain" -o 'jsonpath={.spec.volumes[*].secret.secretName}' | grep -q default-token- ||
  { echo "service-account token volume missing" >&2; exit 1; }
kc -n default delete pod "$id-plain" >/dev/null
echo "    ok: accepted (serviceAccount default, token mounted, Pending), then deleted"

echo "==> mutating webhook over TLS on 127.0.0.1"
(
  cd "$tmp"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=selfcheck-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
  openssl req -newkey rsa:2048 -nodes -keyout hook.key -out hook.csr -subj /CN=127.0.0.1
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >ext.cnf
  openssl x509 -req -in hook.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out hook.crt
) >"$tmp/openssl.log" 2>&1 || { cat "$tmp/openssl.log" >&2; exit 1; }

cat >"$tmp/hook.py" <<'EOF'
import base64, json, ssl, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

d = sys.argv[1]
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(d + "/reviews.log", "a") as f:
            f.write(json.dumps({"path": self.path, "kind": review.get("kind"),
                                "uid": review["request"]["uid"],
                                "name": review["request"].get("name")}) + "\n")
        patch = [{"op": "add", "path": "/metadata/annotations",
                  "value": {"statecar-selfcheck/mutated": "true"}}]
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": {"uid": review["request"]["uid"], "allowed": True,
                                        "patchType": "JSONPatch",
                                        "patch": base64.b64encode(json.dumps(patch).encode()).decode()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

srv = HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(d + "/hook.crt", d + "/hook.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(d + "/port.tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os; os.rename(d + "/port.tmp", d + "/port")
srv.serve_forever()
EOF
python3 "$tmp/hook.py" "$tmp" >"$tmp/hook.out" 2>&1 &
hook_pid=$!
for _ in $(seq 1 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
[ -s "$tmp/port" ] || { cat "$tmp/hook.out" >&2; exit 1; }
port="$(cat "$tmp/port")"

kc apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: $id
webhooks:
- name: selfcheck.statecar.dev
  clientConfig:
    url: https://127.0.0.1:$port/mutate
    caBundle: $(base64 -w0 <"$tmp/ca.crt")
  rules:
  - operations: ["CREATE"]
    apiGroups: [""]
    apiVersions: ["v1"]
    resources: ["pods"]
  objectSelector:
    matchLabels: {statecar-selfcheck: hooked}
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 10
EOF

# The API server picks up new webhook configurations within a second or so.
mutated=""
for _ in $(seq 1 20); do
  pod_yaml "$id-hooked" hooked | kc -n default create -f - >/dev/null
  mutated="$(kc -n default get pod "$id-hooked" -o 'jsonpath={.metadata.annotations.statecar-selfcheck/mutated}')"
  [ "$mutated" = "true" ] && break
  kc -n default delete pod "$id-hooked" >/dev/null
  sleep 0.5
done
[ "$mutated" = "true" ] || { echo "webhook patch not applied" >&2; cat "$tmp/hook.out" >&2; exit 1; }
grep -q "\"kind\": \"AdmissionReview\"" "$tmp/reviews.log" || { echo "webhook got no AdmissionReview" >&2; exit 1; }
echo "    ok: webhook received $(wc -l <"$tmp/reviews.log") AdmissionReview(s) on port $port, patch applied"
kc -n default delete pod "$id-hooked" >/dev/null
kc delete mutatingwebhookconfiguration "$id" >/dev/null
echo "==> selfcheck passed"
