#!/usr/bin/env python3
"""Isolation benchmark (issue 4): app B's p99 latency under a flood of app A, divided by its
unloaded p99. Target: <= 2.

One anyedge node (release build) with two HTTP apps on one port, told apart by Host:
  A  two slow instances (a tiny asyncio origin that answers after SLOW_MS), hard_limit 100 each,
     the app's default budget (max_inflight 1024, queue 512...): flooded by FLOOD concurrent
     connections (wrk), each holding a slow request.
  B  nginx answering 200 at once, driven at a steady rate (wrk with a per-request delay:
     CONNS connections x 1000/DELAY_MS requests/s), measured with wrk --latency.
B is measured alone, then during A's flood, then alone again. The load generators run on CPU 0,
anyedge on CPU 1 (taskset), like bench/run.sh.

  cargo build --release -p anyedge && python3 bench/isolation.py
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/anyedge-target")
ANYEDGE = os.environ.get("ANYEDGE", f"{TARGET}/release/anyedge")
DURATION = int(os.environ.get("DURATION", "10"))
FLOOD = int(os.environ.get("FLOOD", "2000"))
SLOW_MS = int(os.environ.get("SLOW_MS", "1000"))
CONNS = int(os.environ.get("CONNS", "4"))
DELAY_MS = int(os.environ.get("DELAY_MS", "4"))
# A's per-app budget. The default holds the whole flood (2,048 in flight or queued), so A's
# clients wait rather than spin; A_LIMITS="" keeps the app defaults (1,024 + 512 queued), where
# the rest of the flood gets 503 at once and wrk re-sends at once: a request-rate flood.
A_LIMITS = os.environ.get(
    "A_LIMITS", 'limits = { max_inflight = 2048, queue = 2048, queue_timeout = "5s" }')

SLOW_ORIGIN = r"""
import asyncio, sys
SLOW = int(sys.argv[2]) / 1000
async def serve(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            await asyncio.sleep(SLOW)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nslow\n")
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def main():
    s = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await s.serve_forever()
asyncio.run(main())
"""

DELAY_LUA = """
function delay() return %d end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=10):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} never opened")


def wrk_p99(port, host, script, duration, conns):
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
         "-s", script, "-H", f"Host: {host}", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout
    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            sys.exit(f"no {label} in wrk output:\n{out}")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    reqs = re.search(r"^\s*(\d+) requests in", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {
        "p50": ms("50%"), "p99": ms("99%"), "requests": int(reqs.group(1)) if reqs else 0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "none",
    }


def main():
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"missing {tool} (bench/run.sh installs the bench tools)")
    if not os.access(ANYEDGE, os.X_OK):
        sys.exit(f"no anyedge binary at {ANYEDGE}: cargo build --release -p anyedge")
    work = tempfile.mkdtemp(prefix="anyedge-isolation-")
    procs = []
    try:
        slow_ports = [free_port(), free_port()]
        for p in slow_ports:
            procs.append(subprocess.Popen(
                ["taskset", "-c", "0", sys.executable, "-c", SLOW_ORIGIN, str(p), str(SLOW_MS)]))
        fast_port = free_port()
        with open(f"{work}/nginx.conf", "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; server {{ listen 127.0.0.1:{fast_port}; keepalive_requests 100000;
  location / {{ return 200 "fast\\n"; }} }} }}
""")
        procs.append(subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", f"{work}/nginx.conf",
                                       "-p", work]))
        edge_port, admin_port = free_port(), free_port()
        cfg = f"""[node]
id = "iso"
region = "local"
threads = 1
[admin]
listen = "127.0.0.1:{admin_port}"
[limits]
max_connections = 10000
max_connections_per_ip = 10000
[http]
access_log = false
[[apps]]
name = "a"
hostnames = ["a.bench"]
concurrency = {{ type = "requests", soft_limit = 80, hard_limit = 100 }}
{A_LIMITS}
  [[apps.services]]
  ports = [ {{ port = {edge_port}, handlers = ["http"] }} ]
  [[apps.instances]]
  id = "a-1"
  address = "127.0.0.1:{slow_ports[0]}"
  [[apps.instances]]
  id = "a-2"
  address = "127.0.0.1:{slow_ports[1]}"
[[apps]]
name = "b"
hostnames = ["b.bench"]
concurrency = {{ type = "requests", soft_limit = 80, hard_limit = 100 }}
  [[apps.services]]
  ports = [ {{ port = {edge_port}, handlers = ["http"] }} ]
  [[apps.instances]]
  id = "b-1"
  address = "127.0.0.1:{fast_port}"
"""
        with open(f"{work}/anyedge.toml", "w") as f:
            f.write(cfg)
        subprocess.run([ANYEDGE, "check", "--config", f"{work}/anyedge.toml"], check=True)
        procs.append(subprocess.Popen(
            ["taskset", "-c", "1", ANYEDGE, "run", "--config", f"{work}/anyedge.toml"],
            stderr=open(f"{work}/anyedge.log", "w"), env={**os.environ, "RUST_LOG": "warn"}))
        for p in slow_ports + [fast_port, edge_port]:
            wait_port(p)
        script = f"{work}/delay.lua"
        with open(script, "w") as f:
            f.write(DELAY_LUA % DELAY_MS)
        plain = f"{work}/plain.lua"
        with open(plain, "w") as f:
            f.write("-- no delay\n")

        before = wrk_p99(edge_port, "b.bench", script, DURATION, CONNS)
        flood = subprocess.Popen(
            ["taskset", "-c", "0", "wrk", "-t1", f"-c{FLOOD}", f"-d{DURATION + 6}s",
             "--timeout", "30s", "-H", "Host: a.bench", f"http://127.0.0.1:{edge_port}/"],
            stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.setpgrp())
        time.sleep(3)  # let A's flood fill its budget and queue
        during = wrk_p99(edge_port, "b.bench", script, DURATION, CONNS)
        flood_out = flood.communicate()[0]
        after = wrk_p99(edge_port, "b.bench", script, DURATION, CONNS)
        a_reqs = re.search(r"^\s*(\d+) requests in", flood_out, re.M)
        a_non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", flood_out)
        ratio = during["p99"] / before["p99"] if before["p99"] else float("inf")
        print("| B (steady %d conns x %d req/s) | requests | non-2xx | p50 ms | p99 ms |"
              % (CONNS, 1000 // max(DELAY_MS, 1)))
        print("|---|---|---|---|---|")
        for name, r in (("alone", before), (f"during A's flood ({FLOOD} conns, {SLOW_MS} ms origin)", during),
                        ("alone again", after)):
            print(f"| {name} | {r['requests']} | {r['non2xx']} | {r['p50']:.2f} | {r['p99']:.2f} |")
        print()
        print(f"A during the flood: {a_reqs.group(1) if a_reqs else '?'} responses, "
              f"{a_non2xx.group(1) if a_non2xx else 0} non-2xx (503: A's own budget and queue)")
        print(f"A's limits: {A_LIMITS or 'app defaults'}")
        print(f"isolation ratio (B p99 flooded / alone): {ratio:.2f}  (target <= 2)")
    finally:
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=5)
            except Exception:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
