#!/usr/bin/env python3
"""Footprint of the statecar binary: file size, time from exec to the first 204 on
/v1.0/healthz, and resident memory when idle. Runs the in-memory store and, when
redis-server is installed, a Redis store on a private loopback server.

Usage: bench/footprint.py [path/to/statecar] [runs]

bench/bench.py imports `startup` and `rss_kib` from here.
"""
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/v1.0/healthz")
        return c.getresponse().status
    except OSError:
        return None


def proc_status_kib(pid, field):
    """A `kB` field of /proc/PID/status, e.g. VmRSS (resident now) or VmHWM (peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_kib(pid):
    return proc_status_kib(pid, "VmRSS")


def startup(binary, args, runs, settle=1.0):
    """Starts `binary` `runs` times; returns the median and best milliseconds from exec to
    the first 204 on /v1.0/healthz, and the median resident memory (KiB) `settle` seconds
    later (0 when settle is 0)."""
    starts, rss = [], []
    for _ in range(runs):
        port = free_port()
        t0 = time.perf_counter()
        p = subprocess.Popen([binary, "--app-id", "fp", "--dapr-http-port", str(port), *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while healthz(port) != 204:
                if p.poll() is not None:
                    raise RuntimeError(f"statecar exited with {p.returncode}")
                time.sleep(0.0005)
            starts.append((time.perf_counter() - t0) * 1000)
            if settle > 0:
                time.sleep(settle)
                rss.append(rss_kib(p.pid))
        finally:
            p.terminate()
            p.wait()
    return statistics.median(starts), min(starts), statistics.median(rss) if rss else 0


def redis_component(directory, port, host="127.0.0.1"):
    """Writes a state.redis component named statestore for `host`:`port` into `directory`."""
    with open(os.path.join(directory, "statestore.yaml"), "w") as f:
        f.write("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n"
                "  name: statestore\nspec:\n  type: state.redis\n  version: v1\n"
                f"  metadata:\n  - name: redisHost\n    value: {host}:{port}\n")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/statecar"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    size = os.path.getsize(binary)
    print(f"binary: {binary}, {size / 1024 / 1024:.2f} MiB ({size} bytes)")
    try:
        ms, best, rss = startup(binary, [], runs)
    except RuntimeError as e:
        sys.exit(str(e))
    print(f"in-memory store: exec -> 204 on /v1.0/healthz median {ms:.1f} ms (best {best:.1f} ms), "
          f"idle RSS median {rss / 1024:.1f} MiB over {runs} runs")
    if shutil.which("redis-server"):
        port = free_port()
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", d],
                                 stdout=subprocess.DEVNULL)
            try:
                time.sleep(0.3)
                redis_component(d, port)
                ms, best, rss = startup(binary, ["--resources-path", d], runs)
                print(f"redis store:     exec -> 204 on /v1.0/healthz median {ms:.1f} ms "
                      f"(best {best:.1f} ms), idle RSS median {rss / 1024:.1f} MiB over {runs} runs")
            except RuntimeError as e:
                sys.exit(str(e))
            finally:
                r.terminate()
                r.wait()


if __name__ == "__main__":
    main()
