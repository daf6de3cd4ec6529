#!/usr/bin/env python3
"""Keeps a hosts file for dnsmasq (--hostsdir) in step with the cluster's Services, polling the
API server once a second:

    <clusterIP>  <svc>.<ns>.svc.cluster.local
    <podIP>      <svc>.<ns>.svc.cluster.local             (headless Services: every ready address)
    <podIP>      <hostname>.<svc>.<ns>.svc.cluster.local  (headless, addresses with a hostname)

usage: dns-hosts.py API_URL CA_FILE TOKEN_FILE OUT_FILE
It connects only to API_URL. The file is replaced atomically and only when it changes.
"""
import http.client
import json
import os
import ssl
import sys
import time
import urllib.parse

DOMAIN = "svc.cluster.local"


def main():
    url, ca, token_file, out = sys.argv[1:5]
    u = urllib.parse.urlsplit(url)
    with open(token_file) as f:
        token = f.read().strip()
    ctx = ssl.create_default_context(cafile=ca)
    conn = None
    last = None

    def get(path):
        nonlocal conn
        for attempt in (1, 2):
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=10)
                conn.request("GET", path, headers={"Authorization": "Bearer " + token})
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    raise RuntimeError("GET %s: HTTP %d %s" % (path, r.status, body[:200]))
                return json.loads(body)
            except (OSError, http.client.HTTPException):
                conn = None
                if attempt == 2:
                    raise

    while True:
        try:
            lines = []
            headless = set()
            for s in get("/api/v1/services")["items"]:
                ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
                ip = s["spec"].get("clusterIP")
                if ip == "None":
                    headless.add((ns, name))
                elif ip:
                    lines.append("%s %s.%s.%s" % (ip, name, ns, DOMAIN))
            if headless:
                for e in get("/api/v1/endpoints")["items"]:
                    ns, name = e["metadata"]["namespace"], e["metadata"]["name"]
                    if (ns, name) not in headless:
                        continue
                    for sub in e.get("subsets") or []:
                        for a in sub.get("addresses") or []:
                            lines.append("%s %s.%s.%s" % (a["ip"], name, ns, DOMAIN))
                            if a.get("hostname"):
                                lines.append("%s %s.%s.%s.%s" % (a["ip"], a["hostname"], name, ns, DOMAIN))
            text = "\n".join(sorted(set(lines))) + "\n"
            if text != last:
                # dnsmasq ignores dot files in its --hostsdir
                tmp = os.path.join(os.path.dirname(out), "." + os.path.basename(out) + ".tmp")
                with open(tmp, "w") as f:
                    f.write(text)
                os.rename(tmp, out)
                last = text
                print("hosts: %d names" % len(lines), flush=True)
        except Exception as e:  # keep going while the API server restarts
            print("error: %s" % e, flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
