#!/usr/bin/env python3
"""Catalog propagation in a loopback cluster: how long from an instance's registration in etcd
until every node routes with it.

Starts etcd (Debian's `etcd`) and N `anyedge run` nodes on the etcd store (each its own
process and admin port), puts one app with `anyedge apps put`, then C times: writes a new
instance key (what a worker's registration writes) and polls every node's admin /metrics until
the instance is in the snapshot the node routes with (`anyedge_app_concurrency{...instance=}`
is rendered from that snapshot). The time is taken when the last node has it. Prints p50, p99
and max over the changes, and the same for removals. Everything runs on 127.0.0.1 and is
stopped at the end.

    python3 bench/propagation.py                 # 10 nodes, 100 changes
    NODES=10 CHANGES=100 ANYEDGE=target/release/anyedge python3 bench/propagation.py
"""
import base64, json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

NODES = int(os.environ.get("NODES", "10"))
CHANGES = int(os.environ.get("CHANGES", "100"))
ANYEDGE = os.environ.get("ANYEDGE", os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "/var/tmp/anyedge-target"), "release", "anyedge"))
POLL = 0.005
TIMEOUT = 10.0
procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def start(cmd, log):
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(p)
    return p


def stop_all():
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except OSError:
            pass
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def etcd_call(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def has(admin, instance):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
            return f'instance="{instance}"' in r.read().decode()
    except OSError:
        return False


def until_all(admins, want, instance, t0):
    """Seconds from t0 until every admin reports `instance` present (want=True) or gone."""
    def one(admin):
        while time.monotonic() - t0 < TIMEOUT:
            if has(admin, instance) == want:
                return time.monotonic() - t0
            time.sleep(POLL)
        return float("inf")
    with ThreadPoolExecutor(len(admins)) as ex:
        return max(ex.map(one, admins))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    work = tempfile.mkdtemp(prefix="anyedge-prop-")
    try:
        c, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{c}"
        start(["etcd", "--name", "bench", "--data-dir", os.path.join(work, "etcd"),
               "--listen-client-urls", url, "--advertise-client-urls", url,
               "--listen-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
              open(os.path.join(work, "etcd.log"), "w"))
        wait_port(c)
        app_port = free_port()
        apps = os.path.join(work, "apps.toml")
        with open(apps, "w") as f:
            f.write(f'[[apps]]\nname = "prop"\nhostnames = ["prop.test"]\n'
                    f'  [[apps.services]]\n  internal_port = 9\n'
                    f'  ports = [ {{ port = {app_port}, bind = "127.0.0.1", handlers = ["http"] }} ]\n')
        for _ in range(50):
            if subprocess.run([ANYEDGE, "apps", "put", apps, "--etcd", url],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise SystemExit("apps put failed")
        admins = []
        for i in range(NODES):
            admin = free_port()
            cfg = os.path.join(work, f"node{i}.toml")
            with open(cfg, "w") as f:
                f.write(f'[node]\nid = "n{i}"\nroles = ["edge"]\ndrain_timeout = "1s"\n'
                        f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
                        f'[catalog]\nstore = "etcd"\netcd_endpoints = ["{url}"]\n')
            start([ANYEDGE, "run", "--config", cfg], open(os.path.join(work, f"node{i}.log"), "w"))
            admins.append(admin)
        for a in admins:
            wait_port(a)
        # every node has the app before the first change
        t0 = time.monotonic()
        while not all(has_app(a) for a in admins):
            if time.monotonic() - t0 > 20:
                raise SystemExit("nodes did not load the app")
            time.sleep(0.05)
        add, rm = [], []
        for n in range(CHANGES):
            inst = f"p-{n}"
            key = f"/anyedge/instances/prop/{inst}"
            value = json.dumps({"schema": 1, "id": inst, "region": "local",
                                "address": "127.0.0.1:9", "node": "bench-writer"})
            t0 = time.monotonic()
            etcd_call(url, "/v3/kv/put", {"key": b64(key), "value": b64(value)})
            add.append(until_all(admins, True, inst, t0))
            t0 = time.monotonic()
            etcd_call(url, "/v3/kv/deleterange", {"key": b64(key)})
            rm.append(until_all(admins, False, inst, t0))
        for name, xs in (("registration -> routable on all nodes", add),
                         ("removal -> gone from all nodes", rm)):
            ms = [x * 1000 for x in xs]
            print(f"| {name} | {NODES} | {len(ms)} | {pct(ms, 0.5):.0f} | {pct(ms, 0.99):.0f} | {max(ms):.0f} |")
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


def has_app(admin):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
            return 'app="prop"' in r.read().decode()
    except OSError:
        return False


if __name__ == "__main__":
    print("| change | nodes | changes | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    main()
