#!/usr/bin/env python3
"""CPU per request refused by the traffic policy, against one served (issue 20).

One anyedge node (release build) with three HTTP apps on one port, told apart by Host:
  served   no policy, proxied to nginx answering 200 at once
  denied   access = { deny = ["127.0.0.0/8"] }: every request 403 access_denied
  limited  rate_limit = { per_client = 1 }: all but about one a second 429 rate_limited
For each, wrk (keep-alive, CONNS connections, one thread on CPU 0) runs DURATION seconds
against anyedge (on CPU 1, one shard); the node's CPU time (utime + stime from /proc) over
the run, divided by the requests wrk completed, is the CPU per request.

  cargo build --release -p anyedge && python3 bench/policy_cpu.py
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/anyedge-target")
ANYEDGE = os.environ.get("ANYEDGE", f"{TARGET}/release/anyedge")
DURATION = int(os.environ.get("DURATION", "5"))
CONNS = int(os.environ.get("CONNS", "8"))
REPS = int(os.environ.get("REPS", "3"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_port(port, deadline=10):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} never opened")


def main():
    work = tempfile.mkdtemp(prefix="policy-cpu-")
    origin, edge, admin = free_port(), free_port(), free_port()
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(f"""daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; server {{ listen 127.0.0.1:{origin}; location / {{ return 200 "ok\\n"; }} }} }}
""")
    with open(f"{work}/anyedge.toml", "w") as f:
        apps = ""
        for name, policy in [("served", ""), ("denied", 'access = { deny = ["127.0.0.0/8"] }'),
                             ("limited", "rate_limit = { per_client = 1 }")]:
            apps += f"""
[[apps]]
name = "{name}"
hostnames = ["{name}.test"]
concurrency = {{ soft_limit = 1000, hard_limit = 1000 }}
{policy}
  [[apps.services]]
  ports = [ {{ port = {edge}, bind = "127.0.0.1", handlers = ["http"] }} ]
  [[apps.instances]]
  id = "{name}-1"
  address = "127.0.0.1:{origin}"
"""
        f.write(f'[node]\nthreads = 1\n[admin]\nlisten = "127.0.0.1:{admin}"\n[http]\naccess_log = false\n{apps}')
    procs = []
    try:
        procs.append(subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", f"{work}/nginx.conf"],
                                      stderr=subprocess.DEVNULL))
        node = subprocess.Popen(["taskset", "-c", "1", ANYEDGE, "run", "--config", f"{work}/anyedge.toml"],
                                stderr=open(f"{work}/anyedge.log", "w"))
        procs.append(node)
        wait_port(origin)
        wait_port(edge)
        print("| app | answer | requests/s | CPU µs per request |")
        print("|---|---|---|---|")
        for name in ["served", "denied", "limited", "served", "denied", "limited"][: 3 * REPS if REPS < 2 else 6]:
            before = cpu_seconds(node.pid)
            out = subprocess.run(
                ["taskset", "-c", "0", "timeout", str(DURATION + 10), "wrk", "-t1", f"-c{CONNS}",
                 f"-d{DURATION}s", "-H", f"Host: {name}.test", f"http://127.0.0.1:{edge}/"],
                capture_output=True, text=True).stdout
            used = cpu_seconds(node.pid) - before
            total = int(re.search(r"(\d+) requests in", out).group(1))
            non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            refused = int(non2xx.group(1)) if non2xx else 0
            answer = {"served": "200", "denied": "403", "limited": "429"}[name]
            print(f"| {name} | {answer} ({refused} of {total} not 2xx) | {total / DURATION:.0f} | {used / total * 1e6:.2f} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
