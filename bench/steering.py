#!/usr/bin/env python3
"""sk_lookup steering against one socket per port, side by side (docs/steering.md, issue 19).

Run as root: `bench/steering.py BIN` re-runs itself in a network namespace of its own
(`unshare -n`, loopback only), mounts bpffs at /sys/fs/bpf if needed, and measures with the
anyedge binary BIN, once with `steering = "sockets"` and once with `"sk_lookup"`:

1. accept rate and CPU per new connection: wrk, HTTP/1.1 with `Connection: close` (h1_close),
   through one shard to an nginx origin returning 2 bytes;
2. memory of a node with 10,000 raw TCP ports: the process's RSS and descriptors, and the
   kernel's slab growth while it starts;
3. time for a reload adding 1,000 ports: from SIGHUP until every added port accepts.

Every process it starts is stopped by its pid. Prints a Markdown report.
"""
import os, re, shutil, signal, socket, subprocess, sys, tempfile, time

WRK_SECONDS = int(os.environ.get("DURATION", "10"))
REPS = int(os.environ.get("REPS", "3"))
ADMIN = 9180


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def wait_port(port, timeout=60.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.005)
    raise SystemExit(f"port {port} never answered")


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def slab_kib():
    for line in open("/proc/meminfo"):
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


class Node:
    def __init__(self, work, binary, mode, text, name):
        self.path = os.path.join(work, f"{name}.toml")
        self.text = text
        self.write(text)
        self.log = open(os.path.join(work, f"{name}.log"), "w")
        pins = f"/sys/fs/bpf/anyedge-bench-{os.getpid()}"
        self.proc = subprocess.Popen(
            [binary, "run", "--config", self.path, "--admin-listen", f"127.0.0.1:{ADMIN}",
             "--steering", mode, "--bpf-pin-dir", pins],
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "ANYEDGE_LOG": "warn"})
        self.pins = pins
        wait_port(ADMIN)

    def write(self, text):
        tmp = self.path + ".tmp"
        open(tmp, "w").write(text)
        os.rename(tmp, self.path)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.pins, ignore_errors=True)


def toml(mode, ports, handlers, instance, host=None):
    plist = ", ".join(f"{{ port = {p}, handlers = {handlers} }}" for p in ports)
    hosts = f'hostnames = ["{host}"]\n' if host else ""
    return (f'[node]\nid = "bench"\nthreads = 1\nsteering = "{mode}"\n[http]\naccess_log = false\n'
            f'[[apps]]\nname = "b"\n{hosts}  [[apps.services]]\n  ports = [ {plist} ]\n'
            f'  [[apps.instances]]\n  id = "b-1"\n  address = "{instance}"\n')


def origin(work):
    conf = os.path.join(work, "origin.conf")
    open(conf, "w").write(
        f"daemon off; worker_processes 1; pid {work}/origin.pid; error_log {work}/origin.err;\n"
        "events { worker_connections 4096; }\n"
        "http { access_log off; server { listen 127.0.0.1:8081 reuseport backlog=4096;"
        " location / { return 200 \"ok\"; } } }\n")
    p = subprocess.Popen(["nginx", "-c", conf, "-p", work], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_port(8081)
    return p


def h1_close(work, binary, mode):
    node = Node(work, binary, mode, toml(mode, [8080], '["http"]', "127.0.0.1:8081", "b.test"),
                f"close-{mode}")
    try:
        wait_port(8080)
        hz = os.sysconf("SC_CLK_TCK")
        t0 = cpu_ticks(node.proc.pid)
        out = subprocess.run(
            ["timeout", str(WRK_SECONDS + 20), "wrk", "-t1", "-c16", f"-d{WRK_SECONDS}s",
             "-H", "Connection: close", "-H", "Host: b.test", "http://127.0.0.1:8080/"],
            capture_output=True, text=True, check=True).stdout
        ticks = cpu_ticks(node.proc.pid) - t0
        reqs = int(re.search(r"(\d+) requests in", out).group(1))
        errors = re.search(r"Socket errors: (.*)", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return {
            "rps": reqs / WRK_SECONDS,
            "cpu_us": ticks / hz * 1e6 / max(reqs, 1),
            "errors": (errors.group(1) if errors else "none")
            + (f", non-2xx {non2xx.group(1)}" if non2xx else ""),
        }
    finally:
        node.stop()


def many_ports(work, binary, mode, n):
    ports = list(range(20000, 20000 + n))
    before = slab_kib()
    node = Node(work, binary, mode, toml(mode, ports, "[]", "127.0.0.1:8081"), f"mem-{mode}")
    try:
        try:
            wait_port(ports[-1], timeout=30)
            wait_port(20000, timeout=5)
        except SystemExit:
            node.log.flush()
            text = open(node.log.name).read().strip().splitlines()
            return {"failed": (text[-1] if text else "no log")[:300],
                    "rss_mib": 0, "fds": 0, "slab_mib": 0}
        time.sleep(1)
        return {
            "rss_mib": rss_kib(node.proc.pid) / 1024,
            "fds": len(os.listdir(f"/proc/{node.proc.pid}/fd")),
            "slab_mib": (slab_kib() - before) / 1024,
        }
    finally:
        node.stop()


def reload_1000(work, binary, mode):
    base = list(range(20000, 20010))
    node = Node(work, binary, mode, toml(mode, base, "[]", "127.0.0.1:8081"), f"reload-{mode}")
    try:
        wait_port(20000)
        added = list(range(21000, 22000))
        node.write(toml(mode, base + added, "[]", "127.0.0.1:8081"))
        t0 = time.monotonic()
        node.proc.send_signal(signal.SIGHUP)
        for p in reversed(added):
            wait_port(p, timeout=60)
        return {"seconds": time.monotonic() - t0}
    finally:
        node.stop()


def main():
    binary = os.path.abspath(sys.argv[1])
    if os.environ.get("STEERING_BENCH_INSIDE") != "1":
        os.execvp("unshare", ["unshare", "-n", "env", "STEERING_BENCH_INSIDE=1",
                              sys.executable, *sys.argv])
    sh("ip", "link", "set", "lo", "up")
    if subprocess.run(["mountpoint", "-q", "/sys/fs/bpf"]).returncode != 0:
        sh("mount", "-t", "bpf", "bpf", "/sys/fs/bpf")
    work = tempfile.mkdtemp(prefix="anyedge-steer-bench-")
    org = origin(work)
    rows = []
    try:
        close = {"sockets": [], "sk_lookup": []}
        for _ in range(REPS):
            for mode in ("sockets", "sk_lookup"):
                close[mode].append(h1_close(work, binary, mode))
        mem = {(m, n): many_ports(work, binary, m, n)
               for n in (5000, 10000) for m in ("sockets", "sk_lookup")}
        rel = {m: reload_1000(work, binary, m) for m in ("sockets", "sk_lookup")}
    finally:
        org.terminate()
        org.wait()
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
    print(f"# sk_lookup steering vs one socket per port ({os.uname().release}, "
          f"{os.cpu_count()} CPUs, anyedge threads = 1)\n")
    print(f"h1_close: wrk -t1 -c16 -d{WRK_SECONDS}s, Connection: close, nginx origin; {REPS} reps, "
          "modes alternating\n")
    print("| mode | req/s (each rep) | CPU µs per request (each rep) | wrk errors |")
    print("|---|---|---|---|")
    for m, runs in close.items():
        rps = ", ".join("%.0f" % r["rps"] for r in runs)
        cpu = ", ".join("%.1f" % r["cpu_us"] for r in runs)
        print(f"| {m} | {rps} | {cpu} | {runs[-1]['errors']} |")
    print("\nMany raw TCP ports in one app, threads = 1 (descriptor limit "
          f"{os.sysconf('SC_OPEN_MAX')})\n")
    print("| ports | mode | RSS MiB | descriptors | kernel slab growth MiB |")
    print("|---|---|---|---|---|")
    for (m, n), r in mem.items():
        if "failed" in r:
            print(f"| {n} | {m} | did not start: {r['failed']} | | |")
        else:
            print(f"| {n} | {m} | {r['rss_mib']:.1f} | {r['fds']} | {r['slab_mib']:.1f} |")
    print("\nReload adding 1,000 ports to 10: SIGHUP until every added port accepts\n")
    print("| mode | seconds |")
    print("|---|---|")
    for m, r in rel.items():
        print(f"| {m} | {r['seconds']:.3f} |")


if __name__ == "__main__":
    main()
