#!/usr/bin/env python3
"""statecar against webdis and raw Redis, on one machine, in one run.

Starts a private redis-server, statecar (release build, a state.redis store on that server)
and webdis (on the same server) on free loopback ports, drives them with wrk, a fixed-rate
client (bench/src/main.rs) and redis-benchmark, measures footprint from /proc, and prints one
markdown table (also written to target/bench/results.md, raw numbers to results.json).
Run it through bench/run.sh, which installs the tools and builds the binaries; bench/README.md
explains the workloads and how to read the table.

Every process started here listens on or connects to 127.0.0.1 only.
"""
import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import footprint  # noqa: E402

KEYS = 10_000
VALUE_SIZE = 100
APP_ID = "bench"
LUA = os.path.join(HERE, "wrk", "workloads.lua")
CONNECTIONS = (16, 64)
LATENCY_RATE = 1000
LATENCY_CONNECTIONS = 16
LATENCY_ROUNDS = 6
# The GET and SAVE runs that the targets judge: statecar, webdis and redis-benchmark take turns
# for this many rounds, so that a burst of other activity on the shared cores does not land on
# one peer only; each figure is the median over the rounds.
TARGET_ROUNDS = 3
# redis-benchmark runs a request count, not a time: this many requests per second of a round
# (about its rate here without pipelining).
RB_RATE = 70_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1_000_000
MIB = 1024 * 1024

# Workload name -> (label, what webdis does, the redis-benchmark test it is compared with).
WORKLOADS = {
    "get": ("GET one key", "GET /GET/key", "GET"),
    "save": ("SAVE one item, last-write", "PUT /SET/key (value as body)", "SET"),
    "etag": ("SAVE one item, first-write + correct etag", None, None),
    "bulk": ("bulk get, 10 keys", "GET /MGET/k1/.../k10", None),
    "tx": ("transaction, 2 upserts", "GET /MSET/k1/v1/k2/v2", None),
    "mixed": ("mixed, 90% GET / 10% SAVE", "90% /GET, 10% PUT /SET", None),
}

# Dapr's published figures (v1.17 performance report, HTTP state API), not measured here.
DAPR = {
    "p50": "0.73 ms",
    "p99": "1.97 ms",
    "added_p99": "+0.98 ms",
    "rss": "48 MB",
    "cpu": "57 mCPU",
}


class Failed(Exception):
    pass


def value(n):
    """The 100-byte JSON value of key number n (bench/wrk/workloads.lua writes the same)."""
    head = '{"id":"key-%04d","pad":"' % n
    return head + "x" * (VALUE_SIZE - len(head) - 2) + '"}'


def free_port():
    return footprint.free_port()


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def redis_pipeline(port, commands):
    """Sends commands in one go; returns the replies, which must each be one line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"".join(commands))
        data = b""
        while data.count(b"\r\n") < len(commands):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise Failed("redis closed the connection")
            data += chunk
    replies = data.split(b"\r\n")[: len(commands)]
    errors = [r for r in replies if r.startswith(b"-")]
    if errors:
        raise Failed(f"redis: {errors[0].decode()}")
    return replies


def populate(port, statecar=True, plain=True):
    """statecar's layout (a hash: data + version 1) under bench||key-NNNN, and plain string
    copies under plain:key-NNNN for webdis and the direct Redis client."""
    cmds = []
    for n in range(KEYS):
        if statecar:
            cmds.append(resp("HSET", f"{APP_ID}||key-{n:04d}", "data", value(n), "version", "1"))
        if plain:
            cmds.append(resp("SET", f"plain:key-{n:04d}", value(n)))
    redis_pipeline(port, cmds)


def cpu_seconds(pid):
    """utime + stime of every thread of pid."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class RssSampler:
    """Samples VmRSS of a process every 100 ms while in a `with` block; keeps the largest."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, footprint.rss_kib(self.pid))
            except OSError:
                return
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Processes:
    """The servers this run started; each is stopped, by its own pid, on exit."""

    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.tmp, f"{name}.log"), "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env)
        self.procs.append((name, p, log))
        return p

    def log_tail(self, name, lines=20):
        try:
            with open(os.path.join(self.tmp, f"{name}.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self):
        for name, p, _ in self.procs:
            if p.poll() is not None:
                raise Failed(f"{name} exited with {p.returncode}:\n{self.log_tail(name)}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for _, p, _ in self.procs:
            if p.poll() is None:
                p.terminate()
        for _, p, log in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()


def wait_for(check, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise Failed(f"{what} did not come up within {timeout:.0f} s")


def http_request(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def run_measured(argv, timeout):
    """Runs a load generator to completion; returns (exit code, stdout, its CPU seconds)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        errtext = err.read().decode(errors="replace")
    return p.returncode, text + errtext, usage.ru_utime + usage.ru_stime


def wrk(peer, port, workload, conns, duration, check, server_pid, redis_pid):
    # One connection per thread for the etag workload (see workloads.lua), else 2 threads.
    threads = conns if workload == "etag" else 2
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "--timeout", "5s",
            "-s", LUA, f"http://127.0.0.1:{port}", "--", peer, workload, str(KEYS),
            "check" if check else "-", str(conns)]
    cpu0, rcpu0 = cpu_seconds(server_pid), cpu_seconds(redis_pid)
    with RssSampler(server_pid) as rss:
        code, out, gen_cpu = run_measured(argv, duration + 60)
    cpu1, rcpu1 = cpu_seconds(server_pid), cpu_seconds(redis_pid)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if code != 0 or line is None:
        return {"ok": False, "error": f"wrk exited with {code}: {out[-600:]}"}
    s = json.loads(line[len("BENCH_JSON "):])
    n = s["requests"]
    errors = sum(s[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors",
                                "timeouts", "unexpected_status"))
    r = {
        "ok": n > 0 and errors == 0,
        "requests": n,
        "rps": n / (s["duration_us"] / 1e6),
        "errors": errors,
        "wrk": s,
        "threads": threads,
        "server_cpu_ms_per_1k": (cpu1 - cpu0) * 1e6 / n if n else None,
        "redis_cpu_ms_per_1k": (rcpu1 - rcpu0) * 1e6 / n if n else None,
        "loadgen_cpu_ms_per_1k": gen_cpu * 1e6 / n if n else None,
        "rss_peak_kib": rss.peak,
    }
    if not r["ok"]:
        r["error"] = f"{n} requests, {errors} errors: {json.dumps(s)}"
    return r


def grpc_load(client, port, op, conns, duration, server_pid, redis_pid):
    """A closed-loop gRPC run (bench/src/grpc_load.rs), the counterpart of wrk's."""
    argv = [client, "--addr", f"http://127.0.0.1:{port}", "--op", op, "--connections",
            str(conns), "--duration", str(duration), "--keys", str(KEYS)]
    cpu0, rcpu0 = cpu_seconds(server_pid), cpu_seconds(redis_pid)
    code, out, gen_cpu = run_measured(argv, duration + 60)
    cpu1, rcpu1 = cpu_seconds(server_pid), cpu_seconds(redis_pid)
    line = next((ln for ln in out.splitlines() if ln.startswith("{")), None)
    if code != 0 or line is None:
        return {"ok": False, "error": f"grpc-load exited with {code}: {out[-600:]}"}
    s = json.loads(line)
    n = s["requests"]
    r = {
        "ok": n > 0 and s["errors"] == 0,
        "requests": n,
        "rps": s["rps"],
        "errors": s["errors"],
        "server_cpu_ms_per_1k": (cpu1 - cpu0) * 1e6 / n if n else None,
        "redis_cpu_ms_per_1k": (rcpu1 - rcpu0) * 1e6 / n if n else None,
        "loadgen_cpu_ms_per_1k": gen_cpu * 1e6 / n if n else None,
    }
    if not r["ok"]:
        r["error"] = f"{n} requests, {s['errors']} errors"
    return r


def fixed_rate(client, url, duration, warmup, server_pid):
    """GET at LATENCY_RATE req/s over LATENCY_CONNECTIONS connections; CPU and RSS of
    server_pid are taken over the measured window only."""
    argv = [client, "--target", url, "--rate", str(LATENCY_RATE),
            "--connections", str(LATENCY_CONNECTIONS), "--duration", str(duration),
            "--warmup", str(warmup), "--keys", str(KEYS)]
    result = {}

    def window():
        time.sleep(0.1 + warmup + 0.05)
        t0, c0 = time.monotonic(), cpu_seconds(server_pid)
        with RssSampler(server_pid) as rss:
            time.sleep(max(duration - 0.15, 0.1))
        t1, c1 = time.monotonic(), cpu_seconds(server_pid)
        result.update(mcpu=(c1 - c0) / (t1 - t0) * 1000, rss_kib=rss.peak)

    sampler = threading.Thread(target=window)
    sampler.start()
    code, out, gen_cpu = run_measured(argv, duration + warmup + 60)
    sampler.join()
    try:
        r = json.loads(out.strip().splitlines()[0])
    except (ValueError, IndexError):
        return {"ok": False, "error": f"fixed-rate exited with {code}: {out[-600:]}"}
    r.update(result)
    r["ok"] = code == 0 and r["requests"] > 0 and r["errors"] == 0
    if not r["ok"]:
        r["error"] = f"{r['requests']} requests, {r['errors']} errors, first: {r['first_error']}"
    r["client_cpu_s"] = gen_cpu
    return r


def combine(runs, medians, peak):
    """Rounds of one run: the median of each figure in `medians`, the largest `peak` (a memory
    sample), requests and errors summed. The first failed round, if any, stands for them all."""
    failed = [r for r in runs if not r.get("ok")]
    if failed:
        return failed[0]
    out = {"ok": True, "rounds": runs, "requests": sum(r["requests"] for r in runs),
           "errors": sum(r["errors"] for r in runs), peak: max(r[peak] for r in runs)}
    for k in medians:
        out[k] = statistics.median(r[k] for r in runs)
    return out


def combine_redis_benchmark(runs):
    """redis-benchmark rounds of one test: the median of each figure."""
    failed = [r for r in runs if not r.get("ok")]
    if failed:
        return failed[0]
    test = next(iter(runs[0]["tests"]))
    return {"ok": True, "rounds": runs, "tests": {test: {
        k: statistics.median(r["tests"][test][k] for r in runs)
        for k in ("rps", "p50_ms", "p99_ms")}},
        **{k: statistics.median(r[k] for r in runs)
           for k in ("redis_cpu_ms_per_1k", "loadgen_cpu_ms_per_1k")}}


def redis_benchmark(port, conns, pipeline, n, redis_pid, tests=("SET", "GET")):
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t",
            ",".join(t.lower() for t in tests),
            "-c", str(conns), "-P", str(pipeline), "-d", str(VALUE_SIZE), "-r", str(KEYS),
            "-n", str(n), "--csv"]
    c0 = cpu_seconds(redis_pid)
    code, out, gen_cpu = run_measured(argv, 300)
    c1 = cpu_seconds(redis_pid)
    rows = {}
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) > 2 and cells[0] in ("SET", "GET"):
            rows[cells[0]] = {"rps": float(cells[1]), "p50_ms": float(cells[4]),
                              "p99_ms": float(cells[6])}
    ok = code == 0 and set(rows) == set(tests) and all(r["rps"] > 0 for r in rows.values())
    total = len(tests) * n
    return {"ok": ok, "tests": rows, "redis_cpu_ms_per_1k": (c1 - c0) * 1e6 / total,
            "loadgen_cpu_ms_per_1k": gen_cpu * 1e6 / total,
            **({} if ok else {"error": f"redis-benchmark exited with {code}: {out[-600:]}"})}


def sanity(statecar_port, webdis_port):
    """Each peer answers the requests the workloads send, with the expected content."""
    v = value(1).encode()
    status, headers, body = http_request(statecar_port, "GET", "/v1.0/state/statestore/key-0001")
    if status != 200 or body != v or headers.get("etag") != "1":
        raise Failed(f"statecar GET: {status} {headers.get('etag')} {body[:120]!r}")
    status, _, body = http_request(webdis_port, "GET", "/GET/plain:key-0001")
    if status != 200 or json.loads(body) != {"GET": value(1)}:
        raise Failed(f"webdis GET: {status} {body[:120]!r}")


def collect_info(args):
    def version(argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    webdis = version(["dpkg-query", "-W", "-f", "${Version}", "webdis"])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "redis": version(["redis-server", "--version"]),
        "wrk": version(["wrk", "-v"]),
        "webdis": f"webdis {webdis}",
    }


def run(args):
    smoke = args.smoke
    duration = args.duration or (1 if smoke else 8)
    lat_duration = args.latency_duration or (1 if smoke else 2.5)
    warmup = 0.3 if smoke else 0.5
    rb_scale = 0.1 if smoke else 1.0
    round_duration = args.round_duration or (1 if smoke else 5)
    n_rounds = 1 if smoke else TARGET_ROUNDS
    results = {"smoke": smoke, "duration_s": duration, "latency_duration_s": lat_duration,
               "round_duration_s": round_duration, "target_rounds": n_rounds,
               "load_before": os.getloadavg(), "info": collect_info(args),
               "throughput": {}, "grpc": {}, "redis_benchmark": {}, "latency": {},
               "footprint": {},
               "failures": []}
    fail = results["failures"]

    def record(where, r):
        if not r.get("ok", False):
            fail.append(f"{where}: {r.get('error', 'failed')}")
        return r

    with tempfile.TemporaryDirectory(prefix="statecar-bench-") as tmp, Processes(tmp) as procs:
        redis_port, statecar_port, webdis_port = free_port(), free_port(), free_port()
        grpc_port = free_port()
        redis = procs.start("redis", [
            "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", tmp, "--daemonize", "no"])
        wait_for(lambda: redis_pipeline(redis_port, [resp("PING")]), "redis-server")
        populate(redis_port)

        components = os.path.join(tmp, "components")
        os.mkdir(components)
        footprint.redis_component(components, redis_port)
        statecar = procs.start("statecar", [
            args.statecar, "--app-id", APP_ID, "--dapr-http-port", str(statecar_port),
            "--dapr-grpc-port", str(grpc_port), "--resources-path", components])
        wait_for(lambda: footprint.healthz(statecar_port) == 204, "statecar")

        webdis_conf = os.path.join(tmp, "webdis.json")
        with open(webdis_conf, "w") as f:
            json.dump({
                "redis_host": "127.0.0.1", "redis_port": redis_port,
                "http_host": "127.0.0.1", "http_port": webdis_port,
                "threads": 2, "daemonize": False, "database": 0,
                "verbosity": 3, "logfile": os.path.join(tmp, "webdis-own.log"),
            }, f)
        webdis = procs.start("webdis", ["webdis", webdis_conf])
        wait_for(lambda: http_request(webdis_port, "GET", "/PING")[0] == 200, "webdis")
        procs.check_alive()
        sanity(statecar_port, webdis_port)

        time.sleep(1.0)
        results["footprint"]["statecar_idle_rss_kib"] = footprint.rss_kib(statecar.pid)
        results["footprint"]["webdis_idle_rss_kib"] = footprint.rss_kib(webdis.pid)

        # Latency at a fixed rate first, while every process is fresh.
        servers = {
            "statecar": (f"http://127.0.0.1:{statecar_port}/v1.0/state/statestore/key-{{n}}",
                         statecar.pid),
            "webdis": (f"http://127.0.0.1:{webdis_port}/GET/plain:key-{{n}}", webdis.pid),
            "redis": (f"redis://127.0.0.1:{redis_port}/plain:key-{{n}}", redis.pid),
        }
        # Rounds that take turns, so that a burst of other activity on the machine does not
        # land on one peer only; each percentile is the median over the rounds.
        rounds = {peer: [] for peer in servers}
        lat_rounds = 1 if smoke else LATENCY_ROUNDS
        for i in range(lat_rounds):
            for peer, (url, pid) in servers.items():
                print(f"latency: {peer} GET at {LATENCY_RATE} req/s, {LATENCY_CONNECTIONS} "
                      f"connections, {lat_duration} s (round {i + 1} of {lat_rounds})",
                      file=sys.stderr)
                rounds[peer].append(fixed_rate(args.fixed_rate, url, lat_duration, warmup, pid))
                procs.check_alive()
        for peer, runs in rounds.items():
            results["latency"][peer] = record(f"latency {peer}", combine(
                runs, ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms", "mcpu"),
                "rss_kib"))

        peers = (("statecar", statecar_port, statecar.pid), ("webdis", webdis_port, webdis.pid))
        for workload, (_, webdis_op, rb_test) in WORKLOADS.items():
            for conns in CONNECTIONS:
                if rb_test is None:
                    # One run per peer.
                    for peer, port, pid in peers:
                        if peer == "webdis" and webdis_op is None:
                            continue
                        if workload == "etag":
                            time.sleep(0.3)  # let requests cut off by the last run finish
                            populate(redis_port, plain=False)
                        print(f"throughput: {peer} {workload}, {conns} connections, "
                              f"{duration} s", file=sys.stderr)
                        r = wrk(peer, port, workload, conns, duration, smoke, pid, redis.pid)
                        results["throughput"][f"{peer}/{workload}/{conns}"] = record(
                            f"{peer} {workload} {conns} connections", r)
                        procs.check_alive()
                    continue
                # A targeted workload: the three peers take turns, round after round.
                runs = {"statecar": [], "webdis": [], "redis": []}
                for i in range(n_rounds):
                    for peer, port, pid in peers:
                        print(f"throughput: {peer} {workload}, {conns} connections, "
                              f"{round_duration} s (round {i + 1} of {n_rounds})",
                              file=sys.stderr)
                        runs[peer].append(wrk(peer, port, workload, conns, round_duration,
                                              smoke, pid, redis.pid))
                        procs.check_alive()
                    n = int(RB_RATE * round_duration * rb_scale)
                    print(f"redis-benchmark: {rb_test}, {conns} connections, -P 1, -n {n} "
                          f"(round {i + 1} of {n_rounds})", file=sys.stderr)
                    runs["redis"].append(redis_benchmark(redis_port, conns, 1, n, redis.pid,
                                                         (rb_test,)))
                for peer, _, _ in peers:
                    results["throughput"][f"{peer}/{workload}/{conns}"] = record(
                        f"{peer} {workload} {conns} connections",
                        combine(runs[peer], ("rps", "server_cpu_ms_per_1k",
                                             "redis_cpu_ms_per_1k", "loadgen_cpu_ms_per_1k"),
                                "rss_peak_kib"))
                results["redis_benchmark"][f"{conns}/1/{rb_test}"] = record(
                    f"redis-benchmark {rb_test} -c {conns} -P 1",
                    combine_redis_benchmark(runs["redis"]))

        # The same GET and SAVE over gRPC (the Dapr SDKs' protocol), on the same sidecar.
        for op in ("get", "save"):
            for conns in CONNECTIONS:
                print(f"throughput: statecar gRPC {op}, {conns} connections, {duration} s",
                      file=sys.stderr)
                results["grpc"][f"{op}/{conns}"] = record(
                    f"statecar gRPC {op} {conns} connections",
                    grpc_load(args.grpc_load, grpc_port, op, conns, duration, statecar.pid,
                              redis.pid))
                procs.check_alive()

        # The ceiling: Redis alone with 16 commands in flight per connection.
        for conns in CONNECTIONS:
            n = int(2_000_000 * rb_scale * duration / 8)
            print(f"redis-benchmark: {conns} connections, -P 16, -n {n}", file=sys.stderr)
            results["redis_benchmark"][f"{conns}/16"] = record(
                f"redis-benchmark -c {conns} -P 16",
                redis_benchmark(redis_port, conns, 16, n, redis.pid))

        results["footprint"]["statecar_peak_rss_kib"] = footprint.proc_status_kib(
            statecar.pid, "VmHWM")
        results["footprint"]["webdis_peak_rss_kib"] = footprint.proc_status_kib(
            webdis.pid, "VmHWM")
        procs.check_alive()

        runs = 3 if smoke else 20
        print(f"footprint: exec -> first 204 on /v1.0/healthz, {runs} starts", file=sys.stderr)
        try:
            median, best, _ = footprint.startup(args.statecar, ["--resources-path", components],
                                                runs, settle=0)
            results["footprint"].update(ready_ms_median=median, ready_ms_best=best,
                                        ready_runs=runs)
        except RuntimeError as e:
            fail.append(f"startup: {e}")

        if args.static_statecar:
            print("static binary: SAVE and GET through a Redis host name, "
                  f"exec -> first 204 on /v1.0/healthz, {runs} starts", file=sys.stderr)
            results["static"] = static_checks(args.static_statecar, procs, tmp, redis_port, runs)
            if results["static"].get("error"):
                fail.append(f"static binary: {results['static']['error']}")

    size, stripped = binary_size(args.statecar)
    results["footprint"].update(binary_bytes=size, binary_stripped=stripped)
    if args.static_statecar:
        size, stripped = binary_size(args.static_statecar)
        results["static"].update(binary_bytes=size, binary_stripped=stripped,
                                 linkage=linkage(args.static_statecar))
    results["load_after"] = os.getloadavg()
    return results


def binary_size(path):
    """The file's size, and whether `file` calls it stripped (None without `file`)."""
    size = os.path.getsize(path)
    stripped = None
    if shutil.which("file"):
        desc = subprocess.run(["file", "-b", path], capture_output=True, text=True).stdout
        stripped = ", stripped" in desc
    return size, stripped


def linkage(path):
    """"static" or "dynamic", as `ldd` sees the binary (None without ldd)."""
    if not shutil.which("ldd"):
        return None
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    text = out.stdout + out.stderr
    static = "statically linked" in text or "not a dynamic executable" in text
    return "static" if static else "dynamic"


def static_checks(binary, procs, tmp, redis_port, runs):
    """The static build: it must find Redis by a host name (`localhost`, through glibc's
    getaddrinfo, which a static glibc binary still has for /etc/hosts and DNS) and save and
    read back a key there; and how long it takes to be ready."""
    components = os.path.join(tmp, "components-static")
    os.mkdir(components)
    footprint.redis_component(components, redis_port, host="localhost")
    port = free_port()
    p = procs.start("statecar-static", [
        binary, "--app-id", APP_ID, "--dapr-http-port", str(port),
        "--resources-path", components])
    out = {}
    try:
        wait_for(lambda: footprint.healthz(port) == 204 or p.poll() is not None,
                 "static statecar")
        if p.poll() is not None:
            raise Failed(f"exited with {p.returncode}:\n{procs.log_tail('statecar-static')}")
        # A key of its own (the workloads have rewritten the others): saved, then read back.
        key, data = f"static-check-{os.getpid()}", value(0).encode()
        status, _, body = http_request(port, "POST", "/v1.0/state/statestore",
                                       json.dumps([{"key": key, "value": json.loads(data)}]))
        if status != 204:
            raise Failed(f"SAVE through localhost: {status} {body[:120]!r}")
        status, headers, body = http_request(port, "GET", f"/v1.0/state/statestore/{key}")
        out["serves_by_host_name"] = (status == 200 and json.loads(body) == json.loads(data)
                                      and headers.get("etag") == "1")
        if not out["serves_by_host_name"]:
            raise Failed(f"GET through localhost: {status} etag {headers.get('etag')} "
                         f"{body[:120]!r}")
        median, best, _ = footprint.startup(binary, ["--resources-path", components], runs,
                                            settle=0)
        out.update(ready_ms_median=median, ready_ms_best=best)
    except (Failed, RuntimeError, OSError) as e:
        out["error"] = str(e)
    finally:
        p.terminate()
        p.wait()
    return out


# ---------------------------------------------------------------------------------------------
# The table


def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def num(x, digits=0):
    return "—" if x is None else f"{x:,.{digits}f}"


def times(a, b):
    return f"{a / b:.2f}×" if a and b else "—"


def ms(x):
    return "—" if x is None else f"{x:.3f}"


def mib(kib):
    return "—" if not kib else f"{kib / 1024:.1f} MiB"


def verdict(ok):
    return "—" if ok is None else ("**yes**" if ok else "**no**")


SMOKE = False


def held(ok):
    """A target's cell in the table: not judged in a smoke run."""
    return "—" if SMOKE else verdict(ok)


def table(res):
    t, rb, lat, fp = res["throughput"], res["redis_benchmark"], res["latency"], res["footprint"]
    rows, targets = [], []

    def rps(key):
        r = t.get(key)
        return r["rps"] if r and r.get("ok") else None

    def rb_rps(conns, pipeline, test):
        r = rb.get(f"{conns}/1/{test}" if pipeline == 1 else f"{conns}/{pipeline}")
        return r["tests"][test]["rps"] if r and r.get("ok") else None

    def spread(key, other):
        """The lowest and highest per-round ratio of statecar to a peer's run in that round."""
        a, b = t.get(key), other
        if not (a and a.get("ok") and b and b.get("ok")):
            return ""
        ra = [r["rps"] for r in a.get("rounds", [])]
        rb_ = [r["rps"] if "rps" in r else next(iter(r["tests"].values()))["rps"]
               for r in b.get("rounds", [])]
        ratios = [x / y for x, y in zip(ra, rb_) if y]
        if len(ratios) < 2:
            return ""
        return f", rounds {min(ratios):.2f}–{max(ratios):.2f}×"

    for workload, (label, webdis_op, rb_test) in WORKLOADS.items():
        for conns in CONNECTIONS:
            s = rps(f"statecar/{workload}/{conns}")
            w = rps(f"webdis/{workload}/{conns}") if webdis_op else None
            r = rb_rps(conns, 1, rb_test) if rb_test else None
            target, holds = "", "—"
            if workload in ("get", "save"):
                vs_w = s is not None and w is not None and s >= 2.0 * w
                vs_r = s is not None and r is not None and s >= 0.5 * r
                target = "≥ 2.0× webdis; ≥ 0.5× Redis"
                holds = f"{held(vs_w)}; {held(vs_r)}"
                skey = f"statecar/{workload}/{conns}"
                targets.append((f"{label}, {conns} conns: ≥ 2.0× webdis", vs_w,
                                f"{times(s, w)}"
                                + spread(skey, t.get(f"webdis/{workload}/{conns}"))))
                targets.append((f"{label}, {conns} conns: ≥ 0.5× redis-benchmark -P 1", vs_r,
                                f"{times(s, r)}"
                                + spread(skey, rb.get(f"{conns}/1/{rb_test}"))))
            rows.append([f"{label}, {conns} conns (req/s)", num(s),
                         num(w) if webdis_op else "n/a", times(s, w) if webdis_op else "—",
                         f"{num(r)} (redis-benchmark {rb_test} -P 1)" if rb_test else "—",
                         times(s, r) if rb_test else "—", target, holds, ""])
    for conns in CONNECTIONS:
        g = rb_rps(conns, 16, "GET")
        rows.append([f"Redis ceiling: redis-benchmark GET -P 16, {conns} conns (req/s)", "", "",
                     "", num(g), times(rps(f"statecar/get/{conns}"), g), "", "", ""])

    s_lat, w_lat, r_lat = (lat.get(p) if lat.get(p, {}).get("ok") else None
                           for p in ("statecar", "webdis", "redis"))
    label = f"GET at {LATENCY_RATE:,} req/s, {LATENCY_CONNECTIONS} conns"
    for q, name in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"),
                    ("p999_ms", "p99.9")):
        s = s_lat[q] if s_lat else None
        w = w_lat[q] if w_lat else None
        r = r_lat[q] if r_lat else None
        rows.append([f"{label}: {name} (ms)", ms(s), ms(w), times(s, w), ms(r),
                     f"+{s - r:.3f} ms" if s is not None and r is not None else "—", "", "",
                     DAPR.get(name, "")])
    added = (s_lat["p99_ms"] - r_lat["p99_ms"]) if s_lat and r_lat else None
    added_ok = None if added is None else added <= 0.25
    targets.append(("added p99 over direct Redis at 1k req/s, 16 conns ≤ 0.25 ms", added_ok,
                    "—" if added is None else f"{added:+.3f} ms"))
    rows.append([f"{label}: p99 added over direct Redis (ms)",
                 "—" if added is None else f"{added:+.3f}", "", "", "", "", "≤ 0.25 ms",
                 held(added_ok), DAPR["added_p99"]])
    s_cpu = s_lat["mcpu"] if s_lat else None
    w_cpu = w_lat["mcpu"] if w_lat else None
    r_cpu = r_lat["mcpu"] if r_lat else None
    rows.append([f"CPU at {LATENCY_RATE:,} GET/s (mCPU = CPU ms per 1,000 requests)",
                 num(s_cpu), num(w_cpu), times(s_cpu, w_cpu), f"{num(r_cpu)} (redis-server)",
                 "", "", "", DAPR["cpu"]])
    for workload in ("get", "save"):
        s = t.get(f"statecar/{workload}/16", {}).get("server_cpu_ms_per_1k")
        w = t.get(f"webdis/{workload}/16", {}).get("server_cpu_ms_per_1k")
        rb_test = WORKLOADS[workload][2]
        r = rb.get(f"16/1/{rb_test}", {}).get("redis_cpu_ms_per_1k")
        rows.append([f"CPU per 1,000 requests at full load, {WORKLOADS[workload][0]}, 16 conns "
                     "(ms)", num(s, 1), num(w, 1), times(s, w),
                     f"{num(r, 1)} (redis-server, redis-benchmark {rb_test} -P 1)", "", "", "",
                     ""])
    rss_load = s_lat["rss_kib"] if s_lat else None
    rss_ok = None if rss_load is None else rss_load * 1024 <= 10 * MB
    targets.append(("RSS at 1k req/s ≤ 10 MB", rss_ok, mib(rss_load)))
    rows.append(["resident memory, idle", mib(fp.get("statecar_idle_rss_kib")),
                 mib(fp.get("webdis_idle_rss_kib")), "", "", "", "", "", ""])
    rows.append([f"resident memory at {LATENCY_RATE:,} GET/s", mib(rss_load),
                 mib(w_lat["rss_kib"] if w_lat else None), "", "", "", "≤ 10 MB (9.5 MiB)",
                 held(rss_ok), DAPR["rss"]])
    rows.append(["resident memory, peak over the whole run (VmHWM)",
                 mib(fp.get("statecar_peak_rss_kib")), mib(fp.get("webdis_peak_rss_kib")),
                 "", "", "", "", "", ""])
    ready = fp.get("ready_ms_median")
    ready_ok = None if ready is None else ready <= 50
    targets.append(("ready ≤ 50 ms after exec", ready_ok,
                    "—" if ready is None else f"{ready:.1f} ms"))
    rows.append([f"exec → first 204 on /v1.0/healthz, median of {fp.get('ready_runs', 0)} (ms)",
                 "—" if ready is None else f"{ready:.1f} (best {fp['ready_ms_best']:.1f})",
                 "", "", "", "", "≤ 50 ms", held(ready_ok), ""])
    size = fp.get("binary_bytes")
    size_ok = None if size is None else size <= 15 * MB
    stripped = {True: ", stripped", False: ", NOT stripped", None: ""}[fp.get("binary_stripped")]
    targets.append(("binary ≤ 15 MB", size_ok, f"{size / MIB:.1f} MiB{stripped}"))
    rows.append(["binary size", f"{size / MIB:.1f} MiB{stripped}", "", "", "", "",
                 "≤ 15 MB", held(size_ok), ""])
    st = res.get("static")
    if st is None:
        rows.append(["static binary (glibc, `+crt-static`)", "not built (smoke run)" if SMOKE
                     else "not built", "", "", "", "", "", "", ""])
    else:
        size = st.get("binary_bytes")
        stripped = {True: ", stripped", False: ", NOT stripped", None: ""}[
            st.get("binary_stripped")]
        kind = {"static": "static (ldd: not dynamic)", "dynamic": "**dynamic**",
                None: "linkage unknown"}[st.get("linkage")]
        size_ok = None if size is None else size <= 15 * MB and st.get("linkage") == "static"
        targets.append(("static binary ≤ 15 MB, and static", size_ok,
                        f"{size / MIB:.1f} MiB{stripped}, {kind}"))
        rows.append(["static binary (glibc, `+crt-static`): size, linkage",
                     f"{size / MIB:.1f} MiB{stripped}, {kind}", "", "", "", "", "≤ 15 MB",
                     held(size_ok), ""])
        ready = st.get("ready_ms_median")
        serves = st.get("serves_by_host_name")
        rows.append(["static binary: Redis at `localhost` (a host name), SAVE + GET answered; "
                     "exec → first 204, median (ms)",
                     f"{verdict(serves)}; " + ("—" if ready is None else
                                              f"{ready:.1f} (best {st['ready_ms_best']:.1f})"),
                     "", "", "", "", "", "", ""])

    head = ["measure", "statecar", "webdis", "statecar vs webdis", "raw Redis",
            "statecar vs raw Redis", "target", "holds", "Dapr 1.17, published (not measured here)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + grpc_table(res, rps, rb_rps), targets


def grpc_table(res, rps, rb_rps):
    """gRPC next to HTTP on the same sidecar, with the same keys, values and connections."""
    head = ["gRPC (grpc-load) vs HTTP (wrk)", "gRPC req/s", "HTTP req/s", "gRPC vs HTTP",
            "gRPC vs raw Redis (-P 1)", "statecar CPU per 1,000, gRPC (ms)", "same, HTTP (ms)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op, rb_test in (("get", "GET"), ("save", "SET")):
        for conns in CONNECTIONS:
            g = res["grpc"].get(f"{op}/{conns}") or {}
            h = res["throughput"].get(f"statecar/{op}/{conns}") or {}
            g_rps = g["rps"] if g.get("ok") else None
            row = [f"{WORKLOADS[op][0]}, {conns} conns", num(g_rps), num(rps(f"statecar/{op}/{conns}")),
                   times(g_rps, rps(f"statecar/{op}/{conns}")),
                   times(g_rps, rb_rps(conns, 1, rb_test)),
                   num(g.get("server_cpu_ms_per_1k"), 1), num(h.get("server_cpu_ms_per_1k"), 1)]
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def ceiling(t, cores):
    """How much CPU per GET statecar could use and still be 2× webdis on this machine."""
    s, w = t.get("statecar/get/16"), t.get("webdis/get/16")
    if not (s and s.get("ok") and w and w.get("ok")):
        return ""
    shared = s["redis_cpu_ms_per_1k"] + s["loadgen_cpu_ms_per_1k"]
    budget = cores * 1e6 / (2 * w["rps"]) - shared
    return (f". At twice webdis's rate ({2 * w['rps']:,.0f} GET/s) {cores} cores leave "
            f"{max(budget, 0):.1f} µs per request for statecar once wrk and redis-server have "
            f"had theirs ({shared:.1f} µs), and less when other processes run; it used "
            f"{s['server_cpu_ms_per_1k']:.1f} µs, webdis {w['server_cpu_ms_per_1k']:.1f} µs")


def notes(res):
    i = res["info"]
    lb, la = res["load_before"], res["load_after"]
    t = res["throughput"]

    def cpu_line(peer, workload):
        r = t.get(f"{peer}/{workload}/16")
        if not r or not r.get("ok"):
            return "—"
        return (f"{peer} {r['server_cpu_ms_per_1k']:.1f} µs + redis-server "
                f"{r['redis_cpu_ms_per_1k']:.1f} µs + wrk {r['loadgen_cpu_ms_per_1k']:.1f} µs")

    out = [
        f"Machine: {i['cpu']}, {i['cores']} cores, Linux {i['kernel']}; load average "
        f"{lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f} (1/5/15 min) before the run, "
        f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} after. Every process (load generator, "
        "redis-server, statecar, webdis) shares these cores; nothing is pinned. "
        f"{i['redis']}; {i['webdis']} (`threads: 2`); {i['wrk']}.",
        f"Key space: {KEYS:,} keys, {VALUE_SIZE}-byte JSON values, written before the run; "
        f"throughput runs are closed-loop wrk runs (2 wrk threads; for the etag workload one "
        f"thread per connection): GET and SAVE, which the targets judge, in "
        f"{plural(res.get('target_rounds', 1), 'round')} of {res.get('round_duration_s', '?')} s in which "
        "statecar, webdis and redis-benchmark (-P 1, the same test) take turns, each figure "
        "the median of its rounds and the target lines giving the range of the per-round "
        f"ratios; the other workloads one run of {res['duration_s']} s per peer. Latency runs send "
        f"GETs of random keys at a fixed {LATENCY_RATE:,} req/s over {LATENCY_CONNECTIONS} "
        f"connections, {LATENCY_ROUNDS} runs of {res['latency_duration_s']} s per peer after a "
        "warm-up, taking turns (each figure is the median of the runs), with the same client "
        "(bench/src/main.rs) for statecar, webdis and Redis, so the difference is the "
        "server's.",
        "statecar keeps each key as a hash (`data`, `version`): a GET is `HMGET` + `PTTL` in "
        "MULTI/EXEC (a bulk get one MULTI/EXEC for all its keys), a last-write SAVE `HSET` + "
        "`HINCRBY` + `PERSIST` in MULTI/EXEC, a SAVE with an etag or first-write and a "
        "transaction a Lua script (EVALSHA) that checks and writes. webdis runs the plain "
        "commands named below on string copies of the keys, so it does less work in Redis "
        "and checks nothing: the webdis column is an approximate peer, not the same "
        "operation. webdis per workload: " + "; ".join(
            f"{WORKLOADS[w][0]}: {WORKLOADS[w][1] or 'n/a (no conditional write)'}"
            for w in WORKLOADS) + ".",
        "The etag workload: each connection owns 1/C of the keys (all reset to version 1 "
        "first), sends `first-write` with the etag it knows is current and adds one after "
        "each 204, so every request succeeds. The transaction is two upserts of random keys.",
        "CPU per GET at 16 connections, full load (µs per request): " + cpu_line("statecar", "get")
        + "; " + cpu_line("webdis", "get") + ". With every process on the same cores, "
        "throughput is at most the cores ÷ the sum" + ceiling(t, i["cores"]) + ".",
        "Dapr's figures are from its v1.17 performance report (HTTP state API at 1,000 req/s), "
        "published, not measured here, and on other hardware.",
    ]
    if res["smoke"]:
        out.insert(0, "**Smoke run**: debug build, every workload for about a second; the "
                      "numbers only show that the harness works.")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--statecar", required=True, help="the release statecar binary")
    ap.add_argument("--fixed-rate", required=True, help="the fixed-rate client binary")
    ap.add_argument("--grpc-load", required=True, help="the grpc-load client binary")
    ap.add_argument("--static-statecar",
                    help="a statically linked statecar build: its size and linkage are "
                         "reported, and it must serve a GET from Redis found by host name")
    ap.add_argument("--smoke", action="store_true",
                    help="every workload for about a second: checks that the harness works")
    ap.add_argument("--duration", type=int, help="seconds per throughput run (default 8)")
    ap.add_argument("--round-duration", type=int,
                    help="seconds per round of the GET and SAVE runs the targets judge "
                         f"({TARGET_ROUNDS} rounds; default 5)")
    ap.add_argument("--latency-duration", type=float,
                    help=f"seconds per fixed-rate latency run, {LATENCY_ROUNDS} runs per peer "
                         "(default 2.5)")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench"),
                    help="directory for results.md and results.json")
    args = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark", "webdis", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed (bench/run.sh installs it)")
    started = time.monotonic()
    try:
        res = run(args)
    except Failed as e:
        sys.exit(f"bench: {e}")
    res["elapsed_s"] = time.monotonic() - started
    global SMOKE
    SMOKE = res["smoke"]
    text, targets = table(res)
    if res["smoke"]:
        summary = ["Targets: not evaluated in a smoke run (debug build, one-second runs)."]
    else:
        summary = ["Targets:"] + [f"- {name}: {verdict(ok)} ({got})" for name, ok, got in targets]
    doc = "\n\n".join([text, "\n".join(summary), "\n\n".join(notes(res))]) + "\n"
    if res["failures"]:
        doc += "\n**Failures**:\n" + "\n".join(f"- {f}" for f in res["failures"]) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(doc)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(doc)
    print(f"written to {os.path.join(args.out, 'results.md')} "
          f"({res['elapsed_s']:.0f} s)", file=sys.stderr)
    if res["failures"]:
        sys.exit(f"bench: {len(res['failures'])} part(s) failed")


if __name__ == "__main__":
    main()
