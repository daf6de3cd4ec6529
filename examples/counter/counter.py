#!/usr/bin/env python3
"""Increments one shared counter N times through the Dapr state API, safely under concurrency.

Run it next to a sidecar (statecar or daprd), which it finds at $DAPR_HTTP_PORT:

    statecar run --app-id counter -- python3 examples/counter/counter.py 50

Every replica of the app (same --app-id, its own --dapr-http-port) increments the same key. Each
increment is optimistic concurrency as Dapr's docs describe it, done so that no update is lost:

  1. GET the key with consistency=strong; keep the value and its ETag header.
  2. Save value + 1 with that etag and concurrency first-write. If another replica saved in
     between, the etag no longer matches and the save is refused with 409: go back to 1.
  3. When the key does not exist yet (204 on GET), save 1 *without* an etag but still with
     first-write, which means "create only if absent": two replicas that both find the key
     missing cannot both create it; the loser gets 409 and goes back to 1.

A 409 is the only answer retried; any other error stops the app.

Arguments: N (default: $COUNT, else 100). Environment: DAPR_HTTP_PORT (default 3500),
STORE_NAME (default statestore), COUNTER_KEY (default counter).
"""

import os
import random
import sys
import time

try:
    import requests
except ImportError:
    sys.exit(
        "counter.py needs the Python package 'requests': "
        "pip install -r examples/counter/requirements.txt "
        "(on Debian/Ubuntu: sudo apt-get install python3-requests)"
    )

PORT = os.environ.get("DAPR_HTTP_PORT", "3500")
STORE = os.environ.get("STORE_NAME", "statestore")
KEY = os.environ.get("COUNTER_KEY", "counter")
STATE_URL = f"http://127.0.0.1:{PORT}/v1.0/state/{STORE}"
OPTIONS = {"concurrency": "first-write", "consistency": "strong"}


def increment(http):
    """Adds 1 to the counter. Returns (new value, number of 409s retried)."""
    conflicts = 0
    while True:
        got = http.get(f"{STATE_URL}/{KEY}", params={"consistency": "strong"}, timeout=10)
        if got.status_code == 200:
            value = int(got.json())
            # The etag of the value just read: the save below only lands if nobody saved since.
            item = {"key": KEY, "value": value + 1, "etag": got.headers["ETag"], "options": OPTIONS}
        elif got.status_code == 204:
            value = 0
            # No etag: with first-write this creates the key only if it is still absent.
            item = {"key": KEY, "value": 1, "options": OPTIONS}
        else:
            got.raise_for_status()
            raise RuntimeError(f"GET {KEY}: unexpected status {got.status_code}")

        saved = http.post(STATE_URL, json=[item], timeout=10)
        if saved.status_code == 204:
            return value + 1, conflicts
        if saved.status_code != 409:
            raise RuntimeError(f"saving {KEY}: {saved.status_code} {saved.text}")
        # Someone else saved first: read again. A little jitter keeps replicas from colliding
        # in lockstep.
        conflicts += 1
        time.sleep(random.uniform(0, 0.002 * min(conflicts, 10)))


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("COUNT", "100"))
    me = f"{os.environ.get('APP_ID', 'counter')}@{PORT}"  # which replica: its sidecar's port
    print(f"{me}: incrementing {STORE}/{KEY} {count} times")
    conflicts = 0
    value = None
    with requests.Session() as http:
        http.trust_env = False  # the sidecar is on loopback: never through a proxy
        for i in range(1, count + 1):
            value, retried = increment(http)
            conflicts += retried
            if i % 10 == 0 or i == count:
                print(f"{me}: {i}/{count} done, counter was {value} after my last increment")
    retries = "1 retry" if conflicts == 1 else f"{conflicts} retries"
    print(f"{me}: finished {count} increments ({retries} after a 409)")


if __name__ == "__main__":
    main()
