#!/usr/bin/env python3
"""User-space instructions per request of one or more statecar binaries, counted by valgrind's
callgrind: a figure that, unlike time on shared cores, does not move with the machine's load, so
two builds (this tree and the previous commit, say) compare to within a percent or two.

Usage: bench/instructions.py BINARY [BINARY ...] [--workloads get,save] [--seconds S]
Run it through bench/instructions.sh, which builds the binaries and installs valgrind and wrk.

Each binary serves a state.redis store on a private redis-server (filled with bench.py's key
space) under callgrind. wrk warms it up, the counters are zeroed, wrk drives the workload for S
seconds (one thread, 4 connections), and the counters are dumped: instructions ÷ requests.
Everything listens on and connects to 127.0.0.1 only.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
import footprint  # noqa: E402

CONNECTIONS = 4


def wrk(port, workload, seconds):
    argv = ["wrk", "-t", "1", "-c", str(CONNECTIONS), "-d", f"{seconds}s", "--timeout", "10s",
            "-s", bench.LUA, f"http://127.0.0.1:{port}", "--", "statecar", workload,
            str(bench.KEYS), "-", str(CONNECTIONS)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise bench.Failed(f"wrk printed no summary: {out[-400:]}")
    s = json.loads(line[len("BENCH_JSON "):])
    errors = sum(s[k] for k in ("connect_errors", "read_errors", "write_errors",
                                "status_errors", "timeouts", "unexpected_status"))
    if s["requests"] == 0 or errors:
        raise bench.Failed(f"{workload}: {s['requests']} requests, {errors} errors")
    return s["requests"]


def callgrind_control(pid, flag):
    subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, timeout=60,
                   check=True)


def count(binary, components, workload, seconds, tmp):
    """Instructions per request of one binary on one workload."""
    port = bench.free_port()
    out = os.path.join(tmp, f"callgrind.{os.getpid()}.%p")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
         binary, "--app-id", bench.APP_ID, "--dapr-http-port", str(port),
         "--resources-path", components, "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bench.wait_for(lambda: footprint.healthz(port) == 204, "statecar under valgrind",
                       timeout=60)
        wrk(port, workload, 2)
        callgrind_control(proc.pid, "-z")
        requests = wrk(port, workload, seconds)
        before = set(glob.glob(out.replace("%p", str(proc.pid)) + "*"))
        callgrind_control(proc.pid, "-d")
        for _ in range(100):
            dumps = set(glob.glob(out.replace("%p", str(proc.pid)) + "*")) - before
            if dumps:
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if not dumps:
        raise bench.Failed(f"{binary}: callgrind wrote no dump")
    with open(sorted(dumps)[-1]) as f:
        total = next(int(ln.split()[1]) for ln in f if ln.startswith(("summary:", "totals:")))
    return total / requests, requests


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="+", help="statecar binaries (the first is the baseline)")
    ap.add_argument("--names", help="comma-separated labels for the binaries")
    ap.add_argument("--workloads", default="get,save",
                    help="wrk workloads from bench/wrk/workloads.lua (default get,save)")
    ap.add_argument("--seconds", type=int, default=6, help="measured seconds per run")
    args = ap.parse_args()
    names = args.names.split(",") if args.names else args.binaries
    workloads = args.workloads.split(",")
    results = {}
    with tempfile.TemporaryDirectory(prefix="statecar-instr-") as tmp, \
            bench.Processes(tmp) as procs:
        redis_port = bench.free_port()
        procs.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", tmp])
        bench.wait_for(lambda: bench.redis_pipeline(redis_port, [bench.resp("PING")]),
                       "redis-server")
        bench.populate(redis_port, plain=False)
        components = os.path.join(tmp, "components")
        os.mkdir(components)
        footprint.redis_component(components, redis_port)
        for workload in workloads:
            for name, binary in zip(names, args.binaries):
                print(f"callgrind: {name}, {workload}, {args.seconds} s", file=sys.stderr)
                results[(name, workload)] = count(binary, components, workload, args.seconds,
                                                  tmp)
    head = ["workload"] + [f"{n} (instructions per request)" for n in names]
    if len(names) > 1:
        head += [f"{n} vs {names[0]}" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload in workloads:
        per = [results[(n, workload)][0] for n in names]
        row = [workload] + [f"{p:,.0f}" for p in per]
        row += [f"{p / per[0]:.3f}×" for p in per[1:]]
        lines.append("| " + " | ".join(row) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except bench.Failed as e:
        sys.exit(f"instructions: {e}")
