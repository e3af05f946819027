#!/usr/bin/env python3
"""Side-by-side reverse-proxy benchmark on loopback.

Starts an origin (nginx + iperf3 server + an idle TCP echo origin), a set of proxies in front of it, runs
bounded load scenarios against every target (interleaved, repeated), stops
everything it started, and prints a Markdown report (median of N repetitions).

See README.md in this directory for usage and the PROXY_CMD contract.
"""
import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
HOST = "127.0.0.1"


def env(name, default):
    v = os.environ.get(name)
    return default if v is None or v == "" else v


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- utils

def parse_cpulist(s):
    cpus = []
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            cpus.extend(range(int(a), int(b) + 1))
        else:
            cpus.append(int(part))
    return cpus


def port_open(addr, timeout=0.2):
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(addr, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(addr):
            return True
        if proc is not None and proc.popen.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pids(root):
    kids = children_map()
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def tree_rss_kib(root):
    total = 0
    for p in tree_pids(root):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def tree_cpu_ns(root):
    """On-CPU time (ns) of all threads of all processes in the tree (schedstat)."""
    total = 0
    for p in tree_pids(root):
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def proc_stat():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                parts = line.split()
                out[parts[0]] = [int(x) for x in parts[1:]]
    return out


def busy_pct(before, after, cpus):
    """Busy % (avg over the given cpus) and steal % (over all cpus)."""
    def agg(keys):
        tot = idle = 0
        for k in keys:
            d = [a - b for a, b in zip(after[k], before[k])]
            t = sum(d[:8])  # user..steal (guest is included in user)
            tot += t
            idle += d[3] + d[4]
        return tot, idle
    keys = [f"cpu{c}" for c in cpus] if cpus else ["cpu"]
    tot, idle = agg(keys)
    busy = 100.0 * (tot - idle) / tot if tot else float("nan")
    d = [a - b for a, b in zip(after["cpu"], before["cpu"])]
    steal = 100.0 * d[7] / sum(d[:8]) if sum(d[:8]) else 0.0
    return busy, steal


def cores_busy_s(before, after):
    """Busy CPU seconds summed over all cores between two proc_stat() samples."""
    d = [a - b for a, b in zip(after["cpu"], before["cpu"])]
    # user + nice + system + irq + softirq (not idle, iowait, or steal: the hypervisor's)
    return (d[0] + d[1] + d[2] + d[5] + d[6]) / os.sysconf("SC_CLK_TCK")


def ours_cpu_s():
    """CPU seconds of this harness process plus every server process tree it started (alive now)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    for p in Proc.registry:
        if p.alive():
            total += tree_cpu_ns(p.pid) / 1e9
    return total


def wait_quiet(max_wait, max_busy_pct, window=5.0):
    """Wait until the machine is quiet (all-core busy below max_busy_pct over `window` s, measured
    before anything of ours runs). Returns (waited_s, last_busy_pct, quiet?)."""
    t0 = time.monotonic()
    ncpu = os.cpu_count() or 1
    while True:
        st0 = proc_stat()
        time.sleep(window)
        st1 = proc_stat()
        busy = 100.0 * cores_busy_s(st0, st1) / (window * ncpu)
        waited = time.monotonic() - t0
        if busy <= max_busy_pct:
            return waited, busy, True
        if waited >= max_wait:
            return waited, busy, False
        log(f"machine busy ({busy:.0f}% of all cores, not ours): waiting for quiet "
            f"({waited:.0f}/{max_wait:.0f} s)")


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cmd_str(argv):
    return " ".join(shlex.quote(a) for a in argv)


# --------------------------------------------------------------------------- processes

class Proc:
    """A server process we start in its own session; stopped by its pid/pgid only."""
    registry = []

    def __init__(self, name, argv, logfile, cpus, cwd=None, env=None):
        self.name, self.argv, self.logfile, self.cpus = name, argv, logfile, cpus
        self.cwd, self.env = cwd, env
        self.popen = None

    @property
    def full_argv(self):
        pre = ["taskset", "-c", self.cpus] if self.cpus else []
        return pre + self.argv

    def start(self):
        lf = open(self.logfile, "ab")
        lf.write(f"\n=== start {time.strftime('%H:%M:%S')}: {cmd_str(self.full_argv)}\n".encode())
        lf.flush()
        self.popen = subprocess.Popen(self.full_argv, stdout=lf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=self.cwd, env=self.env,
                                      start_new_session=True)
        lf.close()
        if self not in Proc.registry:
            Proc.registry.append(self)
        return self

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def stop(self):
        if self.popen is None:
            return
        if self.popen.poll() is None:
            pids = tree_pids(self.popen.pid)
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=5)
            # descendants that escaped the process group (by pid, never by name)
            time.sleep(0.1)
            for p in pids:
                if p != self.popen.pid and os.path.exists(f"/proc/{p}"):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.popen = None


def stop_all():
    for p in reversed(Proc.registry):
        try:
            p.stop()
        except Exception as e:  # keep cleaning up
            log("stop failed", p.name, e)


# --------------------------------------------------------------------------- setup

def render(template, out, values):
    with open(os.path.join(BENCH_DIR, "conf", template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise SystemExit(f"unfilled placeholders in {template}: {left}")
    with open(out, "w") as f:
        f.write(text)
    return out


def nginx_modules_path():
    out = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    m = re.search(r"--modules-path=(\S+)", out)
    return m.group(1) if m else None


def tool_versions():
    def first(argv, stream="stdout", pat=None):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            txt = (r.stdout + r.stderr).strip().splitlines()
            if pat:
                txt = [l for l in txt if re.search(pat, l)]
            return txt[0].strip() if txt else "?"
        except Exception:
            return "not found"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    deb = "?"
    try:
        with open("/etc/debian_version") as f:
            deb = f.read().strip()
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": f"{mem_gib:.1f} GiB",
        "kernel": platform.release(),
        "os": f"Debian {deb}",
        "nginx": first(["nginx", "-v"]),
        "haproxy": first(["haproxy", "-v"], pat="version"),
        "wrk": first(["wrk", "-v"], pat="wrk"),
        "h2load": first(["h2load", "--version"]),
        "iperf3": first(["iperf3", "--version"]),
        "python": platform.python_version(),
    }


class Target:
    def __init__(self, name, http, h2c, tcp, proc, tcp_proc=None, tcp_idle=None, idle_proc=None):
        self.name, self.http, self.h2c, self.tcp, self.proc = name, http, h2c, tcp, proc
        self.tcp_idle = tcp_idle
        self.tcp_proc = tcp_proc or proc  # process whose CPU is charged in the TCP scenario
        self.idle_proc = idle_proc or proc  # process whose RSS is measured in tcp_idle_mem
        self.is_slot = False  # True for the PROXY_CMD target
        self.tcp_only = False  # PROXY_TCP_ONLY=1: no HTTP listener expected, HTTP scenarios n/a
        self.has = {"http": True, "h2c": h2c is not None, "tcp": tcp is not None,
                    "tcp_idle": tcp_idle is not None}
        self.broken = None

    def ports(self):
        return [a for a in (self.http, self.h2c, self.tcp, self.tcp_idle) if a]

    def live_ports(self, proc):
        """Listeners that `proc` (one of this target's processes) is expected to open."""
        keyed = (("http", self.http), ("h2c", self.h2c), ("tcp", self.tcp), ("tcp_idle", self.tcp_idle))
        if proc is not self.proc:  # direct: the idle origin is its own process
            return [self.tcp_idle] if proc is self.idle_proc and self.tcp_idle else []
        return [a for k, a in keyed if a and self.has[k]
                and not (k == "tcp_idle" and self.idle_proc is not self.proc)]


def http_get(addr, path, timeout=5):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body


def tcp_echo(addr, timeout=5):
    """One round trip through a TCP listener that ends at the echo origin."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(b"check\n")
        got = b""
        while len(got) < 6:
            chunk = s.recv(64)
            if not chunk:
                break
            got += chunk
    return got == b"check\n"


# --------------------------------------------------------------------------- load runners

LOADGEN = []  # load-generator processes in flight (killed by pid on SIGINT/SIGTERM)


def run_bounded(argv, limit):
    """Run a load generator with a hard wall-clock bound (coreutils timeout + python timeout)."""
    full = ["timeout", "-k", "5", str(int(limit))] + argv
    c0 = children_cpu_s()
    t0 = time.monotonic()
    p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         stdin=subprocess.DEVNULL)
    LOADGEN.append(p)
    try:
        out, _ = p.communicate(timeout=limit + 15)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        rc = 124
    finally:
        LOADGEN.remove(p)
    wall = time.monotonic() - t0
    return out or "", rc, wall, children_cpu_s() - c0


class Runner:
    def __init__(self, cfg):
        self.cfg = cfg
        self.lg = ["taskset", "-c", cfg.loadgen_cpus] if cfg.loadgen_cpus else []
        self.commands = {}  # scenario -> example command line

    def _measure(self, target, fn, proc=None):
        """Wrap a load run with CPU accounting of the target process tree and the cores."""
        root = (proc or target.proc).pid
        cpu0 = tree_cpu_ns(root)
        ours0 = ours_cpu_s()
        st0 = proc_stat()
        res = fn()
        st1 = proc_stat()
        ours1 = ours_cpu_s()
        cpu1 = tree_cpu_ns(root)
        busy, steal = busy_pct(st0, st1, self.cfg.server_cpu_list)
        res["target_cpu_s"] = (cpu1 - cpu0) / 1e9
        res["server_cores_busy_pct"] = busy
        res["steal_pct"] = steal
        if res.get("wall_s"):
            # CPU used by processes the harness did not start (another build, say), in % of one core;
            # rough: interrupt time charged to no task shows up here too (a few % when idle)
            busy_all_s = cores_busy_s(st0, st1)
            res["foreign_cpu_pct"] = max(0.0, 100.0 * (busy_all_s - (ours1 - ours0) - res.get("loadgen_cpu_s", 0))
                                         / res["wall_s"])
        if res.get("wall_s"):
            res["loadgen_cpu_pct"] = 100.0 * res.get("loadgen_cpu_s", 0) / res["wall_s"]
            res["target_cpu_pct"] = 100.0 * res["target_cpu_s"] / res["wall_s"]
        if res.get("requests"):
            res["cpu_us_per_req"] = 1e6 * res["target_cpu_s"] / res["requests"]
        return res

    def wrk(self, scenario, target, path, close):
        cfg = self.cfg
        argv = self.lg + ["wrk", f"-t{cfg.wrk_threads}", f"-c{cfg.conns}", f"-d{cfg.duration}s",
                          "--timeout", "5s", "--latency", "-s", os.path.join(BENCH_DIR, "wrk_report.lua")]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://{target.http}{path}")
        self.commands.setdefault(scenario, cmd_str(argv))

        def go():
            out, rc, wall, lcpu = run_bounded(argv, cfg.duration + 30)
            m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
            if not m:
                return {"error": f"wrk rc={rc}: {out[-400:]}"}
            j = json.loads(m.group(1))
            dur = j["duration_us"] / 1e6
            errs = {k: v for k, v in j.items() if k.startswith("err_") and v}
            res = {"rps": j["requests"] / dur, "requests": j["requests"],
                   "p50_ms": j["p50_us"] / 1e3, "p99_ms": j["p99_us"] / 1e3,
                   "p999_ms": j["p999_us"] / 1e3, "mean_ms": j["mean_us"] / 1e3,
                   "MBps": j["bytes"] / dur / 1e6, "wall_s": wall, "loadgen_cpu_s": lcpu}
            if errs:
                res["errors"] = errs
            return res
        return self._measure(target, go)

    def h2load(self, scenario, target, path):
        cfg = self.cfg
        argv = self.lg + ["h2load", f"-t{cfg.wrk_threads}", f"-c{cfg.conns}", f"-m{cfg.h2_streams}",
                          "-D", str(cfg.duration), "--warm-up-time=1",
                          f"http://{target.h2c}{path}"]
        self.commands.setdefault(scenario, cmd_str(argv))

        def go():
            out, rc, wall, lcpu = run_bounded(argv, cfg.duration + 30)
            m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
            m2 = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                           r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
            m3 = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
            if not (m and m2):
                return {"error": f"h2load rc={rc}: {out[-400:]}"}

            def ms(v):
                mm = re.match(r"([\d.]+)(us|ms|s)", v)
                return float(mm.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[mm.group(2)]
            succeeded, failed, errored, tmo = (int(m2.group(i)) for i in (4, 5, 6, 7))
            res = {"rps": float(m.group(3)), "requests": succeeded,
                   "wall_s": wall, "loadgen_cpu_s": lcpu}
            if m3:
                res["mean_ms"] = ms(m3.group(3))
            if failed or errored or tmo:
                res["errors"] = {"failed": failed, "errored": errored, "timeout": tmo}
            # cpu per request is normalised by the measured window (h2load excludes warm-up)
            return res
        r = self._measure(target, go)
        # h2load's req count covers only the measured window, CPU covers warm-up too:
        # rescale CPU/req by (measured window / wall) to stay comparable.
        if r.get("requests") and r.get("wall_s"):
            r["cpu_us_per_req"] = 1e6 * r["target_cpu_s"] / (r["rps"] * r["wall_s"])
        return r

    def iperf3(self, scenario, target):
        cfg = self.cfg
        host, port = target.tcp.rsplit(":", 1)
        argv = self.lg + ["iperf3", "-c", host, "-p", port, "-t", str(cfg.duration), "-J"]
        self.commands.setdefault(scenario, cmd_str(argv))

        def go():
            for attempt in range(3):
                out, rc, wall, lcpu = run_bounded(argv, cfg.duration + 30)
                try:
                    j = json.loads(out[out.index("{"):out.rindex("}") + 1])
                except ValueError:
                    j = {"error": out[-300:]}
                if "error" in j and "busy" in str(j["error"]):
                    time.sleep(2)
                    continue
                break
            if "error" in j:
                return {"error": f"iperf3: {j['error']}"}
            recv = j["end"]["sum_received"]
            return {"gbps": recv["bits_per_second"] / 1e9, "bytes": recv["bytes"],
                    "wall_s": wall, "loadgen_cpu_s": lcpu}
        return self._measure(target, go, target.tcp_proc)

    def idle_mem(self, target, n, scenario="idle_mem"):
        """RSS growth of a freshly started process per idle connection.

        idle_mem: HTTP keep-alive clients (one request each) on the target's HTTP port.
        tcp_idle_mem: raw TCP clients (one echo each) on the target's idle TCP port, which ends at
        the echo origin (for `direct` that is the origin itself, and its RSS is measured).
        """
        cfg = self.cfg
        tcp = scenario == "tcp_idle_mem"
        host, port = (target.tcp_idle if tcp else target.http).rsplit(":", 1)
        proc = target.idle_proc if tcp else target.proc
        mode = ["--mode", "echo"] if tcp else []
        warm = self.lg + [sys.executable, os.path.join(BENCH_DIR, "idle_conns.py"), host, port, "64",
                          "--hold", "0"] + mode
        subprocess.run(["timeout", "60"] + warm, stdin=subprocess.DEVNULL, capture_output=True)
        time.sleep(0.5)
        rss0 = tree_rss_kib(proc.pid)
        argv = self.lg + [sys.executable, os.path.join(BENCH_DIR, "idle_conns.py"), host, port, str(n),
                          "--hold", "120", "--parallel", str(cfg.conns)] + mode
        self.commands.setdefault(scenario, cmd_str(argv))
        p = subprocess.Popen(["timeout", "-k", "5", "180"] + argv, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        LOADGEN.append(p)
        info, line = None, ""
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                r, _, _ = select.select([p.stdout], [], [], 1.0)
                if r:
                    line = p.stdout.readline()
                    if not line:
                        break
                    if line.startswith("READY "):
                        info = json.loads(line[6:])
                        break
            if info is None:
                return {"error": f"idle_conns never READY: {line} {p.stderr.read() if p.poll() is not None else ''}"}
            time.sleep(1.0)
            samples = []
            for _ in range(3):
                samples.append(tree_rss_kib(proc.pid))
                time.sleep(0.3)
            rss1 = max(samples)
        finally:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            LOADGEN.remove(p)
        done = p.stdout.read() if p.stdout else ""
        est = info["established"]
        res = {"rss0_kib": rss0, "rss1_kib": rss1, "established": est,
               "kib_per_conn": (rss1 - rss0) / est if est else float("nan"),
               "baseline_mib": rss0 / 1024.0}
        m = re.search(r"DONE (\{.*\})", done)
        if m:
            d = json.loads(m.group(1))
            res["still_open_at_end"] = d["still_open_at_end"]
            if "still_echo_at_end" in d:
                res["still_echo_at_end"] = d["still_echo_at_end"]
                if d["still_echo_at_end"] < est:
                    res.setdefault("errors", {})["not_echoing_after_hold"] = est - d["still_echo_at_end"]
        if info["errors"] or info["non_200"] or est < n:
            res.setdefault("errors", {}).update(
                {k: info[k] for k in ("errors", "non_200", "first_error") if info[k]})
        return res


# --------------------------------------------------------------------------- report

SCENARIOS = {
    "h1_small": "HTTP/1.1 keep-alive, 2 B body",
    "h1_16k": "HTTP/1.1 keep-alive, 16 KiB body",
    "h1_close": "HTTP/1.1 new connection per request (Connection: close), 2 B body",
    "h2c_small": "HTTP/2 cleartext (prior knowledge) client -> proxy, 2 B body",
    "tcp_bulk": "TCP bulk throughput, iperf3 single stream",
    "idle_mem": "RSS growth per idle keep-alive client connection",
    "tcp_idle_mem": "RSS growth per idle proxied raw TCP connection (echo origin)",
}
HTTP_SCENARIOS = ("h1_small", "h1_16k", "h1_close", "h2c_small", "idle_mem")
MEM_SCENARIOS = ("idle_mem", "tcp_idle_mem")

# (scenario, metric key, label, format, higher_is_better)
ROWS = [
    ("h1_small", "rps", "req/s", "k", True),
    ("h1_small", "p50_ms", "p50 latency, ms", "f3", False),
    ("h1_small", "p99_ms", "p99 latency, ms", "f3", False),
    ("h1_small", "cpu_us_per_req", "CPU µs/req (measured process)", "f2", False),
    ("h1_16k", "rps", "req/s", "k", True),
    ("h1_16k", "p50_ms", "p50 latency, ms", "f3", False),
    ("h1_16k", "p99_ms", "p99 latency, ms", "f3", False),
    ("h1_16k", "cpu_us_per_req", "CPU µs/req (measured process)", "f2", False),
    ("h1_close", "rps", "req/s", "k", True),
    ("h1_close", "p50_ms", "p50 latency, ms", "f3", False),
    ("h1_close", "p99_ms", "p99 latency, ms", "f3", False),
    ("h1_close", "cpu_us_per_req", "CPU µs/req (measured process)", "f2", False),
    ("h2c_small", "rps", "req/s", "k", True),
    ("h2c_small", "mean_ms", "mean latency, ms", "f3", False),
    ("h2c_small", "cpu_us_per_req", "CPU µs/req (measured process)", "f2", False),
    ("tcp_bulk", "gbps", "Gbit/s", "f2", True),
    ("tcp_bulk", "target_cpu_pct", "CPU % of one core (measured process)", "f1", False),
]


def fmt(v, kind):
    if v is None or v != v:
        return "n/a"
    if kind == "k":
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    return f"{v:.{kind[1:]}f}"


def summarize(vals):
    vals = [v for v in vals if v is not None and v == v]
    if not vals:
        return None, None
    med = statistics.median(vals)
    spread = (max(vals) - min(vals)) / 2 / med * 100 if med and len(vals) > 1 else 0.0
    return med, spread


def build_report(cfg, targets, results, runner, facts, started, elapsed,
                 proxy_cmd_text="", proxy_name_text=""):
    names = [t.name for t in targets]
    slot = [] if any(t.is_slot for t in targets) else ["ours (PROXY_CMD unset)"]
    L = []
    L.append(f"# Reverse-proxy benchmark — {started}")
    L.append("")
    L.append("## Machine")
    L.append("")
    for k in ("nproc", "cpu", "memory", "kernel", "os", "nginx", "haproxy", "wrk", "h2load", "iperf3", "python"):
        L.append(f"- **{k}**: {facts[k]}")
    L.append("")
    L.append("## Settings")
    L.append("")
    L.append(f"- duration {cfg.duration} s per run, {cfg.reps} repetitions per cell (median reported), "
             f"targets interleaved and rotated each repetition, {cfg.settle} s settle between runs")
    L.append(f"- load generators pinned to CPUs `{cfg.loadgen_cpus or 'unpinned'}`; origin + proxy "
             f"(+ iperf3 server) pinned to CPUs `{cfg.server_cpus or 'unpinned'}`")
    parts = []
    if any(s in results for s in ("h1_small", "h1_16k", "h1_close")):
        parts.append(f"HTTP: {cfg.conns} connections, {cfg.wrk_threads} load thread(s)")
    if "h2c_small" in results:
        parts.append(f"h2c: {cfg.conns} connections x {cfg.h2_streams} concurrent streams")
    if "tcp_bulk" in results:
        parts.append("tcp_bulk: one iperf3 stream")
    if "idle_mem" in results:
        parts.append(f"idle_mem: {cfg.idle_counts} HTTP keep-alive connections")
    if "tcp_idle_mem" in results:
        parts.append(f"tcp_idle_mem: {cfg.tcp_idle_n} raw TCP connections to an echo origin "
                     f"(set up {cfg.conns} at a time, one echo each, then idle)")
    L.append("- " + "; ".join(parts))
    L.append("- nginx and haproxy: 1 worker process / 1 thread; origin nginx: 1 worker; a PROXY_CMD proxy "
             "gets PROXY_WORKERS=1 and the same CPU pinning")
    q = getattr(cfg, "quiet", None)
    L.append(f"- load average at start: {getattr(cfg, 'loadavg_start', '?')}"
             + (f"; quiet check: {q[1]:.0f}% of all cores busy after waiting {q[0]:.0f} s"
                + ("" if q[2] else " (**not quiet**: numbers may be disturbed)") if q else ""))
    if proxy_cmd_text:
        L.append(f"- PROXY_CMD (`{proxy_name_text}`): `{proxy_cmd_text}`")
    if os.environ.get("PROXY2_CMD", "").strip():
        L.append(f"- PROXY2_CMD (`{env('PROXY2_NAME', 'ours2')}`): `{os.environ['PROXY2_CMD'].strip()}`")
        if os.environ.get("PROXY_VERSION"):
            L.append(f"- {proxy_name_text} build: {os.environ['PROXY_VERSION']}")
        if any(t.tcp_only for t in targets):
            L.append(f"- `{proxy_name_text}` runs TCP-only (PROXY_TCP_ONLY=1): no HTTP readiness check, "
                     "HTTP scenarios show n/a for it")
    L.append("")
    L.append("## Results (median; ± = half the min–max range, % of median)")
    L.append("")
    L.append("| scenario | metric | " + " | ".join(names + slot) + " |")
    L.append("|---|---|" + "---|" * len(names + slot))
    medians = {}
    for sc, key, label, kind, hib in ROWS:
        if sc not in results:
            continue
        cells = []
        for n in names:
            runs = results[sc].get(n, [])
            med, sp = summarize([r.get(key) for r in runs if "error" not in r])
            medians[(sc, key, n)] = med
            cells.append("n/a" if med is None else f"{fmt(med, kind)} ±{sp:.0f}%")
        L.append(f"| {sc} | {label} | " + " | ".join(cells + ["–"] * len(slot)) + " |")
    if "idle_mem" in results:
        for n_conn in cfg.idle_counts_list:
            cells = []
            for n in names:
                runs = results["idle_mem"].get(n, {}).get(n_conn, [])
                med, sp = summarize([r.get("kib_per_conn") for r in runs if "error" not in r])
                medians[("idle_mem", f"kib{n_conn}", n)] = med
                cells.append("n/a" if med is None else f"{med:.2f} ±{sp:.0f}%")
            L.append(f"| idle_mem | KiB RSS per idle conn @{n_conn} | " + " | ".join(cells + ["–"] * len(slot)) + " |")
        cells = []
        for n in names:
            runs = [r for v in results["idle_mem"].get(n, {}).values() for r in v if "error" not in r]
            med, sp = summarize([r.get("baseline_mib") for r in runs])
            cells.append("n/a" if med is None else f"{med:.1f}")
        L.append("| idle_mem | RSS before idle conns, MiB (fresh process, after 64-conn warm-up) | "
                 + " | ".join(cells + ["–"] * len(slot)) + " |")
    if "tcp_idle_mem" in results:
        n_conn = cfg.tcp_idle_n
        cells, base = [], []
        for n in names:
            runs = [r for r in results["tcp_idle_mem"].get(n, {}).get(n_conn, []) if "error" not in r]
            med, sp = summarize([r.get("kib_per_conn") for r in runs])
            medians[("tcp_idle_mem", "kib", n)] = med
            cells.append("n/a" if med is None else f"{med:.2f} ±{sp:.0f}%")
            bm, _ = summarize([r.get("baseline_mib") for r in runs])
            base.append("n/a" if bm is None else f"{bm:.1f}")
        L.append(f"| tcp_idle_mem | KiB RSS per idle TCP conn @{n_conn} | " + " | ".join(cells + ["–"] * len(slot)) + " |")
        L.append("| tcp_idle_mem | RSS before idle conns, MiB (fresh process, after 64-conn warm-up) | "
                 + " | ".join(base + ["–"] * len(slot)) + " |")
    L.append("")
    # ratio table
    proxies = [n for n in names if n != "direct"]
    pairs = [(p, "direct") for p in proxies if "direct" in names]
    extra = [n for n in proxies if n not in ("nginx", "haproxy")]
    if extra:
        for e in extra:
            pairs += [(e, peer) for peer in ("nginx", "haproxy") if peer in names]
    elif "nginx" in names and "haproxy" in names:
        pairs.append(("haproxy", "nginx"))
    if pairs:
        L.append("## Ratios (median / median)")
        L.append("")
        L.append("| scenario | metric | better | " + " | ".join(f"{a}/{b}" for a, b in pairs) + " |")
        L.append("|---|---|---|" + "---|" * len(pairs))
        rowdefs = [(sc, key, label, hib) for sc, key, label, kind, hib in ROWS if sc in results]
        if "idle_mem" in results:
            rowdefs += [("idle_mem", f"kib{c}", f"KiB/conn @{c}", False) for c in cfg.idle_counts_list]
        if "tcp_idle_mem" in results:
            rowdefs.append(("tcp_idle_mem", "kib", f"KiB/conn @{cfg.tcp_idle_n}", False))
        for sc, key, label, hib in rowdefs:
            cells = []
            for a, b in pairs:
                va, vb = medians.get((sc, key, a)), medians.get((sc, key, b))
                cells.append(f"{va / vb:.2f}" if va is not None and vb else "n/a")
            L.append(f"| {sc} | {label} | {'higher' if hib else 'lower'} | " + " | ".join(cells) + " |")
        L.append("")
    # issue targets for the PROXY_CMD proxy
    slot_names = [t.name for t in targets if t.is_slot]
    checks = []
    for sn in slot_names:
        if "tcp_bulk" in results:
            a, b = medians.get(("tcp_bulk", "gbps", sn)), medians.get(("tcp_bulk", "gbps", "haproxy"))
            want = float(env("TARGET_TCP_BULK_VS_HAPROXY", "1.0"))
            if a is not None and b:
                checks.append(f"| tcp_bulk Gbit/s, {sn}/haproxy (median of {cfg.reps}) | ≥ {want:.2f} | "
                              f"{a / b:.2f} ({a:.2f} / {b:.2f}) | {'PASS' if a / b >= want else 'FAIL'} |")
            else:
                checks.append(f"| tcp_bulk Gbit/s, {sn}/haproxy | ≥ {want:.2f} | n/a | n/a |")
        if "tcp_idle_mem" in results:
            v = medians.get(("tcp_idle_mem", "kib", sn))
            want = float(env("TARGET_TCP_IDLE_KIB", "4.0"))
            checks.append(f"| tcp_idle_mem KiB/conn @{cfg.tcp_idle_n}, {sn} | ≤ {want:.2f} | "
                          + (f"{v:.2f} | {'PASS' if v <= want else 'FAIL'} |" if v is not None else "n/a | n/a |"))
    if checks:
        L.append("## Targets")
        L.append("")
        L.append("| target | goal | measured | verdict |")
        L.append("|---|---|---|---|")
        L.extend(checks)
        L.append("")
    # diagnostics
    L.append("## Diagnostics (medians): load-generator CPU % / server-core busy % / steal % / foreign CPU % (worst run)")
    L.append("")
    L.append("Foreign CPU = busy time of all cores not spent by the harness, its servers or its load "
             "generator, in % of one core (a few % is interrupt noise; more means another job ran).")
    L.append("")
    L.append("| scenario | " + " | ".join(names) + " |")
    L.append("|---|" + "---|" * len(names))
    for sc in ("h1_small", "h1_16k", "h1_close", "h2c_small", "tcp_bulk"):
        if sc not in results:
            continue
        cells = []
        for n in names:
            runs = [r for r in results[sc].get(n, []) if "error" not in r]
            if not runs:
                cells.append("n/a")
                continue
            lg = statistics.median(r.get("loadgen_cpu_pct", float("nan")) for r in runs)
            sb = statistics.median(r.get("server_cores_busy_pct", float("nan")) for r in runs)
            st = statistics.median(r.get("steal_pct", float("nan")) for r in runs)
            fo = max(r.get("foreign_cpu_pct", float("nan")) for r in runs)
            cells.append(f"{lg:.0f} / {sb:.0f} / {st:.1f} / {fo:.0f}")
        L.append(f"| {sc} | " + " | ".join(cells) + " |")
    L.append("")
    # errors
    errs = []
    for sc, per in results.items():
        for n, runs in per.items():
            flat = runs if isinstance(runs, list) else [r for v in runs.values() for r in v]
            for i, r in enumerate(flat):
                if "error" in r:
                    errs.append(f"- {sc} / {n} run {i + 1}: FAILED: {r['error'][:300]}")
                elif r.get("errors"):
                    errs.append(f"- {sc} / {n} run {i + 1}: {r['errors']}")
    for t in targets:
        if t.broken:
            errs.append(f"- target {t.name}: {t.broken}")
        if t.tcp_only:
            errs.append(f"- target {t.name}: TCP-only (PROXY_TCP_ONLY=1) -> HTTP scenarios n/a")
        for k, v in t.has.items():
            if not v and not (t.tcp_only and k in ("http", "h2c")):
                errs.append(f"- target {t.name}: no {k} listener -> n/a")
    nd = sum(len(r.get("discarded_foreign_pct", [])) for per in results.values() for runs in per.values()
             if isinstance(runs, list) for r in runs)
    still = [(sc, n, round(r["foreign_cpu_pct"])) for sc, per in results.items() for n, runs in per.items()
             if isinstance(runs, list) for r in runs
             if cfg.max_foreign > 0 and r.get("foreign_cpu_pct", 0) > cfg.max_foreign]
    if nd:
        errs.append(f"- {nd} load run(s) discarded and re-run because other processes used > "
                    f"{cfg.max_foreign:.0f}% of a core meanwhile (MAX_FOREIGN)")
    for sc, n, fo in still:
        errs.append(f"- {sc} / {n}: a kept run still had {fo}% foreign CPU (retries exhausted)")
    L.append("## Errors / warnings")
    L.append("")
    L.extend(errs or ["- none (no socket errors, non-2xx responses or failed requests reported)"])
    L.append("")
    L.append("## Scenarios and exact command lines")
    L.append("")
    for t in targets:
        L.append(f"- target `{t.name}`: http={t.http} h2c={t.h2c} tcp={t.tcp} tcp_idle={t.tcp_idle}; server: "
                 f"`{cmd_str(t.proc.full_argv)}`"
                 + (f"; idle origin: `{cmd_str(t.idle_proc.full_argv)}`" if t.idle_proc is not t.proc else ""))
    L.append("")
    for sc, desc in SCENARIOS.items():
        if sc in runner.commands:
            L.append(f"- **{sc}** — {desc} (first target shown; others differ only in port):")
            L.append(f"  `{runner.commands[sc]}`")
    L.append("")
    L.append(f"`$BENCH` = the directory holding run.sh. Total wall time: {elapsed / 60:.1f} min. "
             f"Rendered configs, logs and raw per-run JSON: `{cfg.workdir}/`.")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=int(env("DURATION", "10")))
    ap.add_argument("--reps", type=int, default=int(env("REPS", "3")))
    ap.add_argument("--conns", type=int, default=int(env("CONNS", "64")))
    ap.add_argument("--h2-streams", type=int, default=int(env("H2_STREAMS", "10")))
    ap.add_argument("--idle-counts", default=env("IDLE_COUNTS", "1000,10000"))
    ap.add_argument("--tcp-idle-n", type=int, default=int(env("TCP_IDLE_N", "9000")),
                    help="idle raw TCP connections for tcp_idle_mem (a proxy holds 2 fds per connection)")
    ap.add_argument("--loadgen-cpus", default=os.environ.get("LOADGEN_CPUS", "0"))
    ap.add_argument("--server-cpus", default=os.environ.get("SERVER_CPUS", "1"))
    ap.add_argument("--settle", type=float, default=float(env("SETTLE", "1")))
    ap.add_argument("--scenarios", default=env("SCENARIOS", ",".join(SCENARIOS)))
    ap.add_argument("--targets", default=env("TARGETS", "direct,nginx,haproxy"),
                    help="peers to include; the PROXY_CMD target is added automatically")
    ap.add_argument("--port-offset", type=int, default=int(env("PORT_OFFSET", "0")))
    ap.add_argument("--out", default=os.environ.get("OUT", ""), help="also write the report here")
    ap.add_argument("--wait-quiet", type=float, default=float(env("WAIT_QUIET", "0")),
                    help="wait up to this many seconds for the machine to be idle before starting")
    ap.add_argument("--max-foreign", type=float, default=float(env("MAX_FOREIGN", "20")),
                    help="re-run a load run during which processes not ours used more than this %% of one "
                         "core (0 = never)")
    ap.add_argument("--foreign-retries", type=int, default=int(env("FOREIGN_RETRIES", "3")))
    ap.add_argument("--quiet-max-busy", type=float, default=float(env("QUIET_MAX_BUSY", "10")),
                    help="'idle' = at most this %% of all cores busy over 5 s")
    ap.add_argument("--workdir", default=os.environ.get("WORKDIR", ""))
    cfg = ap.parse_args()

    cfg.idle_counts_list = [int(x) for x in cfg.idle_counts.split(",") if x.strip()]
    cfg.server_cpu_list = parse_cpulist(cfg.server_cpus) if cfg.server_cpus else []
    lg_cpus = parse_cpulist(cfg.loadgen_cpus) if cfg.loadgen_cpus else list(range(os.cpu_count()))
    cfg.wrk_threads = int(env("WRK_THREADS", str(len(lg_cpus))))
    scenarios = [s for s in cfg.scenarios.split(",") if s]
    if "all" in scenarios:
        scenarios = list(SCENARIOS)
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s}; known: {', '.join(SCENARIOS)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cfg.workdir = os.path.abspath(cfg.workdir or os.path.join(BENCH_DIR, ".run", stamp))
    os.makedirs(cfg.workdir, exist_ok=True)
    os.chmod(cfg.workdir, 0o755)

    for tool in ("nginx", "haproxy", "wrk", "h2load", "iperf3", "taskset", "timeout"):
        if not shutil.which(tool):
            raise SystemExit(f"missing tool: {tool} (see README.md for apt-get install line)")

    # file descriptors for 10k idle connections (inherited by everything we start)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, PermissionError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if "idle_mem" in scenarios and max(cfg.idle_counts_list or [0]) + 1000 > nofile:
        log(f"warning: RLIMIT_NOFILE={nofile} is low for {cfg.idle_counts_list} idle connections")
    if "tcp_idle_mem" in scenarios and 2 * cfg.tcp_idle_n + 200 > nofile:
        log(f"warning: RLIMIT_NOFILE={nofile} is low for {cfg.tcp_idle_n} idle proxied TCP connections "
            f"(a proxy needs 2 descriptors per connection, plus listeners)")

    o = cfg.port_offset
    P = lambda p: f"{HOST}:{p + o}"
    # (http, h2c, tcp) per target; all below the default ephemeral range (32768-60999) so
    # that lingering client sockets / TIME_WAIT from earlier runs can never block a bind.
    ports = {  # http, h2c, tcp (iperf3), tcp_idle (echo origin)
        "direct": (P(18080), P(18082), P(18201), P(18202)),
        "nginx": (P(28080), P(28082), P(28201), P(28202)),
        "haproxy": (P(29080), P(29082), P(29201), P(29202)),
        "ours": (P(30080), P(30082), P(30201), P(30202)),
        "ours2": (P(30180), P(30182), P(30301), P(30302)),
    }
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        inside = [a for v in ports.values() for a in v if lo <= int(a.rsplit(":", 1)[1]) <= hi]
        if inside:
            log(f"warning: ports {inside} are inside the ephemeral range {lo}-{hi}; binds may fail")
    except OSError:
        pass
    be_http, be_h2c, be_tcp, be_idle = ports["direct"]
    wanted = [t for t in cfg.targets.split(",") if t]
    proxy_cmd = os.environ.get("PROXY_CMD", "").strip()
    proxy_name = env("PROXY_NAME", "ours")
    # A second slot (PROXY2_CMD, PROXY2_NAME): two variants of one proxy side by side in one run.
    slots = [(k, c, n) for k, c, n in (
        ("ours", proxy_cmd, proxy_name),
        ("ours2", os.environ.get("PROXY2_CMD", "").strip(), env("PROXY2_NAME", "ours2"))) if c]
    all_ports = [a for k, v in ports.items()
                 if k == "direct" or k in wanted or any(k == sk for sk, _, _ in slots)
                 for a in v]
    busy = [a for a in all_ports if port_open(a)]
    if busy:
        raise SystemExit(f"ports already in use: {busy} (something is still running? use PORT_OFFSET)")

    def sd(name):
        d = os.path.join(cfg.workdir, name)
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        os.chmod(d, 0o755)
        return d

    # origin
    bdir = sd("backend")
    with open(os.path.join(bdir, "16k.bin"), "wb") as f:
        f.write((b"0123456789abcdef" * 1024))
    os.chmod(os.path.join(bdir, "16k.bin"), 0o644)
    # per-process connection budget (client side; a TCP proxy also holds one origin conn per client)
    wc = max((cfg.idle_counts_list or [0]) + [cfg.tcp_idle_n]) + 2048
    render("backend-nginx.conf.tmpl", os.path.join(bdir, "nginx.conf"), {
        "NOFILE": nofile, "WORKER_CONNECTIONS": wc, "BACKEND_HTTP": be_http, "BACKEND_H2C": be_h2c,
        "DOCROOT": bdir})
    backend = Proc("backend-nginx", ["nginx", "-p", bdir + "/", "-e", "stderr", "-c",
                                     os.path.join(bdir, "nginx.conf")],
                   os.path.join(bdir, "log.txt"), cfg.server_cpus)
    iperf_srv = Proc("iperf3-server", ["iperf3", "-s", "-B", HOST, "-p", be_tcp.rsplit(":", 1)[1]],
                     os.path.join(bdir, "iperf3.log"), cfg.server_cpus)
    idle_origin = Proc("tcp-idle-origin", [sys.executable, os.path.join(BENCH_DIR, "tcp_idle_origin.py"), be_idle],
                       os.path.join(bdir, "tcp_idle_origin.log"), cfg.server_cpus)

    targets = []
    targets.append(Target("direct", be_http, be_h2c, be_tcp, backend, tcp_proc=iperf_srv,
                          tcp_idle=be_idle, idle_proc=idle_origin))
    if "nginx" in wanted:
        ndir = sd("nginx")
        mp = nginx_modules_path()
        stream_so = os.path.join(mp, "ngx_stream_module.so") if mp else None
        has_stream = bool(stream_so and os.path.exists(stream_so))
        l_http, l_h2c, l_tcp, l_idle = ports["nginx"]
        # worker_connections counts client and upstream connections alike: 2 per proxied TCP conn
        nwc = max(wc + 2048, 2 * cfg.tcp_idle_n + 1024 if "tcp_idle_mem" in scenarios else 0)
        render("proxy-nginx.conf.tmpl", os.path.join(ndir, "nginx.conf"), {
            "NOFILE": nofile, "WORKER_CONNECTIONS": nwc, "BACKEND_HTTP": be_http,
            "LISTEN_HTTP": l_http, "LISTEN_H2C": l_h2c,
            "LOAD_STREAM_MODULE": f"load_module {stream_so};" if has_stream else "# stream module not available",
            "STREAM_BLOCK": (f"stream {{\n    server {{\n        listen {l_tcp};\n"
                             f"        proxy_pass {be_tcp};\n    }}\n"
                             f"    server {{\n        listen {l_idle} backlog=4096;\n"
                             f"        proxy_pass {be_idle};\n    }}\n}}") if has_stream else ""})
        proc = Proc("nginx", ["nginx", "-p", ndir + "/", "-e", "stderr", "-c", os.path.join(ndir, "nginx.conf")],
                    os.path.join(ndir, "log.txt"), cfg.server_cpus)
        targets.append(Target("nginx", l_http, l_h2c, l_tcp if has_stream else None, proc,
                              tcp_idle=l_idle if has_stream else None))
    if "haproxy" in wanted:
        hdir = sd("haproxy")
        l_http, l_h2c, l_tcp, l_idle = ports["haproxy"]
        render("proxy-haproxy.cfg.tmpl", os.path.join(hdir, "haproxy.cfg"), {
            "MAXCONN": wc, "NOFILE": nofile, "LISTEN_HTTP": l_http, "LISTEN_H2C": l_h2c, "LISTEN_TCP": l_tcp,
            "BACKEND_HTTP": be_http, "BACKEND_TCP": be_tcp, "LISTEN_TCP_IDLE": l_idle,
            "BACKEND_TCP_IDLE": be_idle})
        proc = Proc("haproxy", ["haproxy", "-db", "-f", os.path.join(hdir, "haproxy.cfg")],
                    os.path.join(hdir, "log.txt"), cfg.server_cpus)
        targets.append(Target("haproxy", l_http, l_h2c, l_tcp, proc, tcp_idle=l_idle))
    for slot_key, s_cmd, s_name in slots:
        odir = sd(slot_key)
        l_http, l_h2c, l_tcp, l_idle = ports[slot_key]
        tcp_only = env("PROXY_TCP_ONLY", "0") not in ("0", "no", "false")
        penv = dict(os.environ)
        penv.update({
            "PROXY_LISTEN_HTTP": l_http, "PROXY_LISTEN_H2C": l_h2c, "PROXY_LISTEN_TCP": l_tcp,
            "PROXY_LISTEN_TCP_IDLE": l_idle,
            "PROXY_UPSTREAM_HTTP": be_http, "PROXY_UPSTREAM_TCP": be_tcp, "PROXY_UPSTREAM_TCP_IDLE": be_idle,
            "PROXY_LISTEN_HTTP_PORT": l_http.rsplit(":", 1)[1],
            "PROXY_LISTEN_H2C_PORT": l_h2c.rsplit(":", 1)[1],
            "PROXY_LISTEN_TCP_PORT": l_tcp.rsplit(":", 1)[1],
            "PROXY_LISTEN_TCP_IDLE_PORT": l_idle.rsplit(":", 1)[1],
            "PROXY_UPSTREAM_HTTP_PORT": be_http.rsplit(":", 1)[1],
            "PROXY_UPSTREAM_TCP_PORT": be_tcp.rsplit(":", 1)[1],
            "PROXY_UPSTREAM_TCP_IDLE_PORT": be_idle.rsplit(":", 1)[1],
            "PROXY_HOST": HOST, "PROXY_WORKERS": "1", "PROXY_WORKDIR": odir,
            "PROXY_MAX_CONNS": str(wc), "PROXY_NOFILE": str(nofile),
            "PROXY_TCP_ONLY": "1" if tcp_only else "0",
        })
        proc = Proc(s_name, ["bash", "-c", s_cmd], os.path.join(odir, "log.txt"),
                    cfg.server_cpus, cwd=os.getcwd(), env=penv)
        targets.append(Target(s_name, l_http, l_h2c, l_tcp, proc, tcp_idle=l_idle))
        targets[-1].is_slot = True
        if tcp_only:
            targets[-1].tcp_only = True
            targets[-1].has["http"] = targets[-1].has["h2c"] = False
        if s_name in ("direct", "nginx", "haproxy"):
            raise SystemExit("PROXY_NAME must differ from the built-in target names")

    started = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    t_start = time.monotonic()

    def on_signal(sig, frame):
        log(f"signal {sig}: stopping everything we started")
        for p in list(LOADGEN):  # `timeout` forwards SIGTERM to the load generator
            try:
                p.terminate()
            except OSError:
                pass
        stop_all()
        sys.exit(130)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    results = {s: {} for s in scenarios}
    raw_path = os.path.join(cfg.workdir, "raw.json")
    cfg.quiet = None
    if cfg.wait_quiet > 0:
        waited, qbusy, quiet = wait_quiet(cfg.wait_quiet, cfg.quiet_max_busy)
        cfg.quiet = (waited, qbusy, quiet)
        log(f"quiet check: {qbusy:.0f}% of all cores busy before start after {waited:.0f} s"
            + ("" if quiet else " -- NOT quiet, numbers may be disturbed"))
    with open("/proc/loadavg") as f:
        cfg.loadavg_start = " ".join(f.read().split()[:3])
    try:
        backend.start()
        iperf_srv.start()
        idle_origin.start()
        for a, pr in ((be_http, backend), (be_h2c, backend), (be_tcp, iperf_srv), (be_idle, idle_origin)):
            if not wait_port(a, 10, pr):
                raise SystemExit(f"origin did not open {a}; see {pr.logfile}")
        st, body = http_get(be_http, "/ok")
        st2, body2 = http_get(be_http, "/16k")
        if (st, body, st2, len(body2)) != (200, b"ok", 200, 16384):
            raise SystemExit(f"origin self-check failed: {st} {body[:20]} {st2} {len(body2)}")
        if not tcp_echo(be_idle):
            raise SystemExit(f"idle TCP origin self-check failed on {be_idle}")

        for t in targets[1:]:
            t.proc.start()
            # a TCP-only proxy (PROXY_TCP_ONLY=1) is ready when its TCP port is
            first = t.tcp if t.tcp_only else t.http
            if not first or not wait_port(first, float(env("PROXY_START_TIMEOUT", "20")), t.proc):
                t.broken = (f"{'TCP' if t.tcp_only else 'HTTP'} listener {first} never opened "
                            f"(see {t.proc.logfile})")
                log(t.broken)
                continue
            time.sleep(0.5)
            for k, addr in (("h2c", t.h2c), ("tcp", t.tcp), ("tcp_idle", t.tcp_idle)):
                if addr and t.has[k] and not wait_port(addr, 3, t.proc):
                    t.has[k] = False
        for t in targets:
            if t.broken:
                continue
            if t.has["tcp_idle"]:
                try:
                    if not tcp_echo(t.tcp_idle):
                        t.has["tcp_idle"] = False
                        log(f"{t.name}: echo through {t.tcp_idle} failed, skipping tcp_idle_mem")
                except OSError as e:
                    t.has["tcp_idle"] = False
                    log(f"{t.name}: echo through {t.tcp_idle} failed ({e}), skipping tcp_idle_mem")
            if t.tcp_only:
                if not (t.has["tcp"] or t.has["tcp_idle"]):
                    t.broken = "TCP-only target has no working TCP listener"
                    log(f"{t.name}: {t.broken}")
                continue
            try:
                st, body = http_get(t.http, "/ok")
                st2, body2 = http_get(t.http, "/16k")
                if st != 200 or body != b"ok" or st2 != 200 or len(body2) != 16384:
                    t.broken = f"functional check failed: /ok -> {st} {body[:20]!r}, /16k -> {st2} {len(body2)} B"
            except OSError as e:
                t.broken = f"functional check failed: {e}"
            if t.has["h2c"] and not t.broken:
                r = subprocess.run(["timeout", "20", "h2load", "-n", "20", "-c", "1", f"http://{t.h2c}/ok"],
                                   capture_output=True, text=True)
                if "20 succeeded" not in r.stdout:
                    t.has["h2c"] = False
                    log(f"{t.name}: h2c check failed, skipping h2c: {r.stdout[-200:]}")
            if t.broken:
                log(f"{t.name}: {t.broken}")
        live = [t for t in targets if not t.broken]
        log("targets:", ", ".join(f"{t.name}({'+'.join(k for k, v in t.has.items() if v)})" for t in live))

        runner = Runner(cfg)
        load_sc = [s for s in scenarios if s not in MEM_SCENARIOS]
        if load_sc:
            log("warm-up (2 s per target, not recorded)")
            for t in live:
                if t.has["http"] and any(s in HTTP_SCENARIOS for s in load_sc):
                    run_bounded(runner.lg + ["wrk", "-t1", f"-c{cfg.conns}", "-d2s", f"http://{t.http}/ok"], 20)
                if t.has["tcp"] and "tcp_bulk" in load_sc:
                    host, port = t.tcp.rsplit(":", 1)
                    run_bounded(runner.lg + ["iperf3", "-c", host, "-p", port, "-t", "2", "-J"], 30)
                    time.sleep(cfg.settle)
        for rep in range(cfg.reps):
            order = live[rep % len(live):] + live[:rep % len(live)]
            for sc in load_sc:
                for t in order:
                    need = {"h2c_small": "h2c", "tcp_bulk": "tcp"}.get(sc, "http")
                    if not t.has[need]:
                        continue
                    if not t.proc.alive():
                        t.broken = f"process died (see {t.proc.logfile})"
                        results[sc].setdefault(t.name, []).append({"error": t.broken})
                        continue
                    disturbed = []
                    while True:
                        if sc == "h1_small":
                            r = runner.wrk(sc, t, "/ok", False)
                        elif sc == "h1_16k":
                            r = runner.wrk(sc, t, "/16k", False)
                        elif sc == "h1_close":
                            r = runner.wrk(sc, t, "/ok", True)
                        elif sc == "h2c_small":
                            r = runner.h2load(sc, t, "/ok")
                        else:
                            r = runner.iperf3(sc, t)
                        fo = r.get("foreign_cpu_pct", 0.0)
                        if cfg.max_foreign <= 0 or fo <= cfg.max_foreign or len(disturbed) >= cfg.foreign_retries:
                            break
                        # another job used the machine during this run: discard it and run it again
                        disturbed.append(round(fo))
                        log(f"rep {rep + 1}/{cfg.reps} {sc} {t.name}: {fo:.0f}% foreign CPU "
                            f"(> {cfg.max_foreign:.0f}%), discarded; waiting for quiet and running again")
                        wait_quiet(120, cfg.quiet_max_busy)
                    if disturbed:
                        r["discarded_foreign_pct"] = disturbed
                    results[sc].setdefault(t.name, []).append(r)
                    main_val = r.get("rps", r.get("gbps"))
                    log(f"rep {rep + 1}/{cfg.reps} {sc:9s} {t.name:8s} "
                        + (f"{main_val:,.1f}" if main_val is not None else r.get("error", "")[:200])
                        + (f" p99={r['p99_ms']:.3f}ms" if "p99_ms" in r else "")
                        + (f" cpu/req={r['cpu_us_per_req']:.2f}us" if "cpu_us_per_req" in r else "")
                        + f" lg={r.get('loadgen_cpu_pct', 0):.0f}% srv={r.get('server_cores_busy_pct', 0):.0f}%"
                        + (f" ERR={r['errors']}" if r.get("errors") else ""))
                    with open(raw_path, "w") as f:
                        json.dump(results, f, indent=1)
                    time.sleep(cfg.settle)

        for sc in [s for s in MEM_SCENARIOS if s in scenarios]:
            results[sc] = {}
            counts = cfg.idle_counts_list if sc == "idle_mem" else [cfg.tcp_idle_n]
            need = "http" if sc == "idle_mem" else "tcp_idle"
            for n in counts:
                for rep in range(cfg.reps):
                    order = live[rep % len(live):] + live[:rep % len(live)]
                    for t in order:
                        if not t.has[need]:
                            continue
                        # fresh process for every memory sample
                        proc = t.idle_proc if sc == "tcp_idle_mem" else t.proc
                        proc.stop()
                        proc.start()
                        ok = all(wait_port(a, 20, proc) for a in t.live_ports(proc))
                        if not ok:
                            r = {"error": "restart failed"}
                        else:
                            time.sleep(0.3)
                            r = runner.idle_mem(t, n, sc)
                        results[sc].setdefault(t.name, {}).setdefault(n, []).append(r)
                        log(f"rep {rep + 1}/{cfg.reps} {sc}@{n} {t.name:8s} "
                            + (f"{r['kib_per_conn']:.2f} KiB/conn (rss {r['rss0_kib']}->{r['rss1_kib']} KiB)"
                               if "kib_per_conn" in r else r.get("error", ""))
                            + (f" ERR={r['errors']}" if r.get("errors") else ""))
                        with open(raw_path, "w") as f:
                            json.dump(results, f, indent=1)
                        time.sleep(cfg.settle)
    finally:
        stop_all()

    facts = tool_versions()
    report = build_report(cfg, targets, results, runner, facts, started, time.monotonic() - t_start,
                          proxy_cmd, proxy_name)
    # no machine-specific absolute paths in the report
    report = report.replace(sys.executable, "python3").replace(BENCH_DIR, "$BENCH")
    with open(os.path.join(cfg.workdir, "report.md"), "w") as f:
        f.write(report)
    if cfg.out:
        with open(cfg.out, "w") as f:
            f.write(report)
    print(report)


if __name__ == "__main__":
    main()
