#!/usr/bin/env python3
"""Catalog propagation and node churn in a loopback cluster.

Starts etcd (Debian's `etcd`) and a fleet of `anyedge run` processes on the etcd store, all on
127.0.0.1 with mutual TLS between nodes (a cluster CA made by `anyedge certs`): NODES nodes of
which WORKERS are worker-only nodes running one instance of the app each, the rest edge-only
nodes. Every port is taken once (admin, backhaul, etcd, the app's), and each node's log is
written outside the directory holding its config file (which the node watches). Then:

1. Fleet start: every node started at once; reloads per node until the catalog is quiet.
2. Churn: EDGE_JOINS more edges join one at a time, then leave (SIGTERM); then WORKER_JOINS more
   workers. After each, once every node's catalog revision reached etcd's revision
   (`/healthz`, and 0.5 s more: ten burst windows), the fleet's reloads are read from /metrics
   (`anyedge_config_reloads_total`): reloads per node per join, edges and workers apart.
3. Propagation: CHANGES times, an instance key is written to etcd (what a worker's registration
   writes) and then deleted; the time until every edge has the change in force is when the last
   edge logged the reload that applied it (the log line's timestamp, written once the new
   snapshot routes; polling 100 admin ports every 5 ms would load the machine more than the
   change does). Every tenth change is also checked on every edge's /metrics: the instance is in
   the snapshot it routes with (`anyedge_app_concurrency{...instance=}`), then gone.

Prints Markdown tables. Everything it starts is stopped by process group at the end.

    python3 bench/propagation.py                         # 10 nodes (1 worker), 100 changes
    NODES=100 CHANGES=100 python3 bench/propagation.py   # issue 21's fleet
    ANYEDGE=target/release/anyedge python3 bench/propagation.py
"""
import base64, datetime, json, os, re, shutil, signal, socket, subprocess, tempfile, time
import urllib.request

NODES = int(os.environ.get("NODES", "10"))
WORKERS = int(os.environ.get("WORKERS", str(max(1, NODES // 10))))
CHANGES = int(os.environ.get("CHANGES", "100"))
EDGE_JOINS = int(os.environ.get("EDGE_JOINS", "5"))
WORKER_JOINS = int(os.environ.get("WORKER_JOINS", "3"))
ANYEDGE = os.environ.get("ANYEDGE", os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "/var/tmp/anyedge-target"), "release", "anyedge"))
TIMEOUT = 20.0
SETTLE = 0.5
RELOADS = 'anyedge_config_reloads_total{result="ok"}'
procs = []
used_ports = set()


def free_port():
    """A loopback port free now and never handed out before in this run."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p not in used_ports:
            used_ports.add(p)
            return p


def wait_port(port, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def start(cmd, log):
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             env=dict(os.environ, ANYEDGE_LOG="info"))
    procs.append(p)
    return p


def stop(p, timeout=10):
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout)
    except OSError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def stop_all():
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def etcd_call(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def etcd_revision(url):
    return int(etcd_call(url, "/v3/kv/range", {"key": b64("\0")})["header"]["revision"])


def metrics(admin):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def catalog_revision(admin):
    """The etcd revision the node's catalog reflects (`/healthz`), 0 before its listing."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as r:
            return int(json.load(r)["catalog"]["revision"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def etcd_has(url, key):
    return int(etcd_call(url, "/v3/kv/range", {"key": b64(key), "count_only": True})
               .get("count", 0)) > 0


def metric(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


class Fleet:
    def __init__(self, work, url, app_port):
        self.work, self.url, self.app_port = work, url, app_port
        self.certs = os.path.join(work, "certs")
        self.nodes = {}  # id -> dict(admin, proc, log, role)
        subprocess.run([ANYEDGE, "certs", "cluster-ca", "--out", self.certs], check=True,
                       capture_output=True)

    def start(self, node_id, role):
        """Start node `node_id` ("edge" or "worker"); its config in a directory of its own,
        its log in logs/."""
        subprocess.run([ANYEDGE, "certs", "node", "--ca", self.certs, "--id", node_id,
                        "--out", self.certs], check=True, capture_output=True)
        admin = free_port()
        conf_dir = os.path.join(self.work, "conf", node_id)
        os.makedirs(conf_dir)
        c = self.certs
        text = (f'[node]\nid = "{node_id}"\nregion = "local"\nroles = ["{role}"]\n'
                f'threads = 1\ndrain_timeout = "1s"\n')
        if role == "worker":
            bh = free_port()
            text += f'backhaul_listen = "127.0.0.1:{bh}"\nadvertise = "127.0.0.1:{bh}"\n'
        text += (f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
                 f'[cluster]\nca = "{c}/cluster-ca.pem"\ncert = "{c}/{node_id}.pem"\n'
                 f'key = "{c}/{node_id}-key.pem"\n'
                 f'[catalog]\nstore = "etcd"\netcd_endpoints = ["{self.url}"]\n')
        if role == "worker":
            text += f'[[instances]]\napp = "prop"\nid = "{node_id}-i"\naddress = "127.0.0.1:9"\n'
        cfg = os.path.join(conf_dir, "node.toml")
        with open(cfg, "w") as f:
            f.write(text)
        log = os.path.join(self.work, "logs", f"{node_id}.log")
        proc = start([ANYEDGE, "run", "--config", cfg], log)
        self.nodes[node_id] = {"admin": admin, "proc": proc, "log": log, "role": role}
        return node_id

    def stop(self, node_id):
        stop(self.nodes.pop(node_id)["proc"])

    def ids(self, role=None):
        return [n for n, v in self.nodes.items() if role is None or v["role"] == role]

    def settle(self):
        """Every node's catalog at etcd's current revision, then SETTLE more."""
        want = etcd_revision(self.url)
        end = time.monotonic() + TIMEOUT
        for n in list(self.nodes):
            while catalog_revision(self.nodes[n]["admin"]) < want:
                if time.monotonic() > end:
                    raise SystemExit(f"{n} did not reach revision {want}")
                time.sleep(0.02)
        time.sleep(SETTLE)

    def reloads(self, ids):
        return {n: metric(metrics(self.nodes[n]["admin"]), RELOADS) for n in ids}

    def until_all(self, ids, check, what):
        end = time.monotonic() + TIMEOUT * 3
        for n in ids:
            while not check(metrics(self.nodes[n]["admin"])):
                if time.monotonic() > end:
                    raise SystemExit(f"{n}: {what} did not happen")
                time.sleep(0.05)


def has(instance):
    return lambda text: f'instance="{instance}"' in text


def lacks(instance):
    return lambda text: f'instance="{instance}"' not in text


def per_join(fleet, before, after, role):
    ids = [n for n in before if n in after and fleet.nodes[n]["role"] == role]
    return sum(after[n] - before[n] for n in ids) / max(1, len(ids))


def churn(fleet, role, joins, seq):
    """`joins` nodes of `role` join one at a time, then leave; per node per join and leave,
    the fleet's reloads on edges and on workers."""
    rows = []
    joined = []
    for phase in ("joins", "leaves"):
        per_edge, per_worker = [], []
        for k in range(joins):
            fleet.settle()
            fleet_ids = [n for n in fleet.ids() if n not in joined]
            before = fleet.reloads(fleet_ids)
            if phase == "joins":
                n = fleet.start(f"{role}-j{seq}-{k}", role)
                joined.append(n)
                wait_port(fleet.nodes[n]["admin"])
                end = time.monotonic() + TIMEOUT
                while not etcd_has(fleet.url, f"/anyedge/nodes/{n}"):
                    if time.monotonic() > end:
                        raise SystemExit(f"{n} did not register")
                    time.sleep(0.02)
                if role == "worker":
                    fleet.until_all(fleet.ids("edge"), has(f"{n}-i"), f"{n}'s instance routed")
            else:
                n = joined.pop()
                fleet.stop(n)
                if role == "worker":
                    fleet.until_all(fleet.ids("edge"), lacks(f"{n}-i"), f"{n}'s instance gone")
            fleet.settle()
            after = fleet.reloads(fleet_ids)
            per_edge.append(per_join(fleet, before, after, "edge"))
            per_worker.append(per_join(fleet, before, after, "worker"))
        rows.append((f"{role} {phase[:-1]}", joins, sum(per_edge) / joins,
                     max(per_edge), sum(per_worker) / joins, max(per_worker)))
    return rows


LINE = re.compile(r"^(\S+)\s+INFO\s.*config reloaded")


def reload_times(log, offset):
    """Timestamps (epoch seconds) of the reloads logged after byte `offset`; new offset."""
    with open(log, "rb") as f:
        f.seek(offset)
        data = f.read()
    # Whole lines only: the node may be writing one right now.
    data = data[:data.rfind(b"\n") + 1]
    times = []
    for line in data.decode(errors="replace").splitlines():
        m = LINE.match(line)
        if m:
            times.append(datetime.datetime.fromisoformat(m.group(1)).timestamp())
    return times, offset + len(data)


def propagation(fleet):
    edges = fleet.ids("edge")
    logs = {n: fleet.nodes[n]["log"] for n in edges}
    fleet.settle()
    offsets = {n: os.path.getsize(p) for n, p in logs.items()}
    add, rm, extra = [], [], 0
    for k in range(CHANGES):
        inst = f"p-{k}"
        key = f"/anyedge/instances/prop/{inst}"
        value = json.dumps({"schema": 1, "id": inst, "region": "local",
                            "address": "127.0.0.1:9", "node": "bench-writer"})
        for kind, out in (("put", add), ("delete", rm)):
            t0 = time.time()
            if kind == "put":
                etcd_call(fleet.url, "/v3/kv/put", {"key": b64(key), "value": b64(value)})
            else:
                etcd_call(fleet.url, "/v3/kv/deleterange", {"key": b64(key)})
            last, pending = 0.0, set(edges)
            end = time.monotonic() + TIMEOUT
            while pending:
                for n in list(pending):
                    times, offsets[n] = reload_times(logs[n], offsets[n])
                    if times:
                        last = max(last, times[0])
                        pending.discard(n)
                if time.monotonic() > end:
                    raise SystemExit(f"no reload for {kind} {inst} on {sorted(pending)[:5]}")
                time.sleep(0.01)
            out.append(last - t0)
            if k % 10 == 0:
                check = has(inst) if kind == "put" else lacks(inst)
                fleet.until_all(edges, check, f"{kind} of {inst} in force")
            # One reload per change: let a straggling second one show before the next change.
            time.sleep(0.06)
            for n in edges:
                times, offsets[n] = reload_times(logs[n], offsets[n])
                extra += len(times)
    return add, rm, extra


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    work = tempfile.mkdtemp(prefix="anyedge-prop-")
    os.makedirs(os.path.join(work, "logs"))
    try:
        c, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{c}"
        start(["etcd", "--name", "bench", "--data-dir", os.path.join(work, "etcd"),
               "--listen-client-urls", url, "--advertise-client-urls", url,
               "--listen-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
              os.path.join(work, "logs", "etcd.log"))
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
        fleet = Fleet(work, url, app_port)
        t0 = time.monotonic()
        for i in range(NODES):
            fleet.start(f"w{i}" if i < WORKERS else f"e{i}", "worker" if i < WORKERS else "edge")
        for n in fleet.ids():
            wait_port(fleet.nodes[n]["admin"])
        for w in fleet.ids("worker"):
            fleet.until_all(fleet.ids("edge"), has(f"{w}-i"), f"{w}'s instance routed")
        started = time.monotonic() - t0
        fleet.settle()
        at_start = fleet.reloads(fleet.ids())
        print(f"## Fleet start: {NODES} nodes ({WORKERS} workers), every instance routed by "
              f"every edge after {started:.1f} s\n")
        print("| role | nodes | reloads per node (mean) | max |")
        print("|---|---|---|---|")
        for role in ("edge", "worker"):
            xs = [at_start[n] for n in fleet.ids(role)]
            print(f"| {role} | {len(xs)} | {sum(xs) / max(1, len(xs)):.2f} | {max(xs, default=0):.0f} |")
        rows = churn(fleet, "edge", EDGE_JOINS, 0) + churn(fleet, "worker", WORKER_JOINS, 1)
        print("\n## Reloads per node per join or leave (the rest of the fleet)\n")
        print("| change | times | edges: mean | edges: max | workers: mean | workers: max |")
        print("|---|---|---|---|---|---|")
        for name, n, em, ex, wm, wx in rows:
            print(f"| {name} | {n} | {em:.2f} | {ex:.2f} | {wm:.2f} | {wx:.2f} |")
        add, rm, extra = propagation(fleet)
        print(f"\n## Propagation to {len(fleet.ids('edge'))} edges "
              f"({extra} reloads beyond one per edge per change)\n")
        print("| change | changes | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|")
        for name, xs in (("registration -> in force on every edge", add),
                         ("removal -> gone from every edge", rm)):
            ms = [x * 1000 for x in xs]
            print(f"| {name} | {len(ms)} | {pct(ms, 0.5):.0f} | {pct(ms, 0.99):.0f} | {max(ms):.0f} |")
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
