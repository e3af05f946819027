#!/usr/bin/env python3
"""Catalog scale: apps x instances on one node (issue 21, item 6).

For each size APPSxINSTANCES (all apps on one HTTP port, routed by Host; instances at loopback
addresses nothing listens on, no health checks) it starts `anyedge run` on a generated file and
measures:

- start: from the process start until `/healthz` answers with generation 1 and the app port
  accepts; resting RSS (VmRSS once started and idle) and the start peak (VmHWM);
- one change through the file: one instance's address of one app changes (the file written to a
  temporary name and renamed over, as editors do; the node's watch sees it): wall time until
  `/healthz` shows the next generation (includes the watch's 150 ms debounce), the process's CPU
  for it (utime+stime, less the idle rate), the reload's peak RSS (VmHWM after resetting it with
  `clear_refs`), and the slowest `/healthz` answer while the reload ran (polled every 5 ms);
- with ETCD=1, the same catalog through etcd (Debian's `etcd`): apps put with `anyedge apps put`,
  instance keys written as a worker's registration writes them (batched transactions over etcd's
  JSON gateway), a node on `store = "etcd"`; then one instance key changes its address: time until
  the node's generation moves, its CPU, and the time until a request is served by the moved
  instance (a probe app whose one instance moves from a dead address to a live server).

RSS per app and per instance come from the sizes: per app = (RSS(A x 1) - RSS(0 x 0)) / A, per
instance = (RSS(A x I) - RSS(A x 1)) / (A x (I - 1)).

    python3 bench/catalog_scale.py                          # SIZES=0x0,1000x1,1000x10
    SIZES=0x0,100000x1,100000x10 ETCD=1 python3 bench/catalog_scale.py
    ANYEDGE=/path/to/anyedge python3 bench/catalog_scale.py

Prints a Markdown table. Every process it starts is stopped by its process group at the end.
"""
import base64, http.server, json, os, shutil, signal, socket, subprocess, tempfile, threading
import time, urllib.request

SIZES = [tuple(int(x) for x in s.split("x"))
         for s in os.environ.get("SIZES", "0x0,1000x1,1000x10").split(",")]
ETCD = os.environ.get("ETCD", "") == "1"
FILE = os.environ.get("FILE", "1") == "1"  # FILE=0: through etcd alone
CHANGES = int(os.environ.get("CHANGES", "3"))
# BATCH=N (etcd): then N changes 150 ms apart with nothing polling the node, and the node's CPU
# over them less its idle rate, divided by the generations they made: CPU per change to a tenth
# of a millisecond (one change's own window reads CPU in 10 ms clock ticks, and its /healthz
# polling costs the node more than a few milliseconds)
BATCH = int(os.environ.get("BATCH", "0"))
# PERF=DIR: record each change with `perf record -e cpu-clock -g` into DIR/<store>-<size>-<n>.data
PERF = os.environ.get("PERF", "")
# PERF_GRAPH=dwarf: callers from DWARF unwinding (the release build has no frame pointers, so
# `-g` names the functions but not who called them)
PERF_GRAPH = os.environ.get("PERF_GRAPH", "")
ANYEDGE = os.environ.get("ANYEDGE", os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "/var/tmp/anyedge-target"), "release", "anyedge"))
TICK = os.sysconf("SC_CLK_TCK")
procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(cmd, log, env=None):
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             env=dict(os.environ, ANYEDGE_LOG="warn", **(env or {})))
    procs.append(p)
    return p


def stop(p, timeout=30):
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except OSError:
        pass


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def healthz(admin, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=timeout) as r:
        return json.load(r)


def generation(admin):
    try:
        return int(healthz(admin)["generation"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_generation(admin, want, proc, timeout=600):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"anyedge exited ({proc.returncode})")
        if generation(admin) >= want:
            return time.monotonic()
        time.sleep(0.002)
    raise SystemExit(f"generation {want} not reached")


class HealthzProbe:
    """Polls /healthz every 5 ms on one kept connection; records the slowest answer."""

    def __init__(self, admin):
        self.admin, self.worst, self.done = admin, 0.0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done:
            t0 = time.monotonic()
            try:
                healthz(self.admin, timeout=30)
            except OSError:
                pass
            self.worst = max(self.worst, time.monotonic() - t0)
            time.sleep(0.005)

    def stop(self):
        self.done = True
        self.thread.join()
        return self.worst


def app_block(i, instances, port, with_instances=True, addr_of=None):
    out = [f'[[apps]]\nname = "a{i}"\nhostnames = ["a{i}.example"]\n'
           f'[[apps.services]]\ninternal_port = 8080\n'
           f'ports = [ {{ port = {port}, handlers = ["http"] }} ]\n']
    if with_instances:
        for j in range(instances):
            addr = addr_of(i, j) if addr_of else f"127.0.0.1:{20000 + j}"
            out.append(f'[[apps.instances]]\nid = "i{j}"\naddress = "{addr}"\n')
    return "".join(out)


def node_head(admin, extra=""):
    return (f'[node]\nid = "scale"\nregion = "local"\nthreads = 1\ndrain_timeout = "1s"\n'
            f'{extra}[admin]\nlisten = "127.0.0.1:{admin}"\n')


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def started(proc, admin, port, t0):
    wait_generation(admin, 1, proc)
    end = time.monotonic() + 600
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return time.monotonic() - t0
        except OSError:
            time.sleep(0.01)
    raise SystemExit("app port did not open")


def idle_rate(pid, seconds=1.0):
    c0 = cpu_s(pid)
    time.sleep(seconds)
    return (cpu_s(pid) - c0) / seconds


def batch_changes(proc, admin, put, n, spacing=0.15):
    """Make `n` changes (`put(k)`) `spacing` apart, polling nothing; CPU per generation made."""
    pid = proc.pid
    # Let the start's and the changes' tail work end before the idle rate is read (at 100,000
    # apps a rate read 1 s after the changes was twice the rate during the batch).
    time.sleep(10)
    rate = idle_rate(pid, 8.0)
    gen = generation(admin)
    c0, t0 = cpu_s(pid), time.monotonic()
    for k in range(n):
        put(k)
        time.sleep(spacing)
    end = time.monotonic() + 60
    while generation(admin) < gen + n and time.monotonic() < end:
        time.sleep(0.05)
    cpu = cpu_s(pid) - c0 - rate * (time.monotonic() - t0)
    made = generation(admin) - gen
    return {"changes": n, "generations": made, "cpu_per_change": cpu / max(made, 1),
            "idle_rate": rate}


def one_change(proc, admin, apply, settle=0.3, name="change"):
    """Run `apply` (which makes one change) and measure until the next generation."""
    pid = proc.pid
    perf = None
    if PERF:
        graph = ["--call-graph", PERF_GRAPH] if PERF_GRAPH else ["-g"]
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", *graph, "-o",
                                 os.path.join(PERF, name + ".data"), "-p", str(pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    rate = idle_rate(pid, 0.5)
    gen = generation(admin)
    reset_peak(pid)
    probe = HealthzProbe(admin)
    c0, t0 = cpu_s(pid), time.monotonic()
    apply()
    t1 = wait_generation(admin, gen + 1, proc)
    time.sleep(settle)
    cpu = cpu_s(pid) - c0 - rate * (time.monotonic() - t0)
    worst = probe.stop()
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    return {"wall": t1 - t0, "cpu": max(cpu, 0.0), "peak_kib": status_kib(pid, "VmHWM"),
            "healthz_worst": worst}


def file_size(apps, instances, work):
    admin, port = free_port(), free_port()
    conf = os.path.join(work, f"f{apps}x{instances}")
    os.makedirs(conf, exist_ok=True)
    path = os.path.join(conf, "node.toml")
    blocks = [app_block(i, instances, port) for i in range(apps)]
    # An app on the port even at 0 x 0, so the listener exists.
    probe = app_block("probe", 1, port, addr_of=lambda i, j: "127.0.0.1:9")
    write_atomic(path, node_head(admin) + probe + "".join(blocks))
    t0 = time.monotonic()
    proc = start([ANYEDGE, "run", "--config", path], os.path.join(work, f"f{apps}x{instances}.log"))
    start_s = started(proc, admin, port, t0)
    time.sleep(2)
    row = {"apps": apps, "instances": instances, "start": start_s,
           "rss_kib": status_kib(proc.pid, "VmRSS"), "start_peak_kib": status_kib(proc.pid, "VmHWM")}
    changes = []
    for k in range(CHANGES if apps else 0):
        target = (k * 7919) % apps
        moved = lambda i, j, k=k, t=target: (f"127.0.0.1:{30000 + k}" if (i, j) == (t, 0)
                                             else f"127.0.0.1:{20000 + j}")
        blocks[target] = app_block(target, instances, port, addr_of=moved)
        text = node_head(admin) + probe + "".join(blocks)
        changes.append(one_change(proc, admin, lambda: write_atomic(path, text),
                                  name=f"file-{apps}x{instances}-{k}"))
    row["file"] = changes
    row["rss_after_kib"] = status_kib(proc.pid, "VmRSS")
    stop(proc)
    return row


def etcd_call(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def instance_value(app, inst, addr):
    return json.dumps({"schema": 1, "id": inst, "region": "local", "address": addr,
                       "node": "bench-writer"})


class Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"moved\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def served_via(port, host):
    try:
        with socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(f"GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def etcd_size(apps, instances, work):
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    data = os.path.join(work, f"etcd{apps}x{instances}")
    etcd = start(["etcd", "--data-dir", data, "--listen-client-urls", url,
                  "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                  "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                  "--initial-cluster", f"default=http://127.0.0.1:{peer}",
                  "--quota-backend-bytes", str(8 * 1024 ** 3)], data + ".log")
    end = time.monotonic() + 30
    while True:
        try:
            etcd_call(url, "/v3/kv/range", {"key": b64("x")})
            break
        except OSError:
            if time.monotonic() > end:
                raise SystemExit("etcd did not start")
            time.sleep(0.1)
    port, admin = free_port(), free_port()
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    apps_file = os.path.join(work, f"apps{apps}.toml")
    with open(apps_file, "w") as f:
        f.write(app_block("probe", 0, port, with_instances=False))
        f.write("".join(app_block(i, 0, port, with_instances=False) for i in range(apps)))
    t0 = time.monotonic()
    subprocess.run([ANYEDGE, "apps", "put", apps_file, "--etcd", url], check=True,
                   capture_output=True)
    put_apps = time.monotonic() - t0
    ops = [("aprobe", "p0", "127.0.0.1:9")]
    ops += [(f"a{i}", f"i{j}", f"127.0.0.1:{20000 + j}")
            for i in range(apps) for j in range(instances)]
    t0 = time.monotonic()
    for k in range(0, len(ops), 100):
        etcd_call(url, "/v3/kv/txn", {"success": [
            {"requestPut": {"key": b64(f"/anyedge/instances/{a}/{i}"),
                            "value": b64(instance_value(a, i, addr))}}
            for a, i, addr in ops[k:k + 100]]})
    put_instances = time.monotonic() - t0
    conf = os.path.join(work, f"e{apps}x{instances}")
    os.makedirs(conf, exist_ok=True)
    path = os.path.join(conf, "node.toml")
    write_atomic(path, node_head(admin, 'roles = ["edge"]\n')
                 + f'[catalog]\nstore = "etcd"\netcd_endpoints = ["{url}"]\n')
    t0 = time.monotonic()
    proc = start([ANYEDGE, "run", "--config", path], os.path.join(work, f"e{apps}x{instances}.log"))
    start_s = started(proc, admin, port, t0)
    time.sleep(2)
    row = {"apps": apps, "instances": instances, "start": start_s, "put_apps": put_apps,
           "put_instances": put_instances, "rss_kib": status_kib(proc.pid, "VmRSS")}
    changes = []
    for k in range(CHANGES):
        a, i = f"a{(k * 7919) % max(apps, 1)}", "i0"
        if not apps:
            a, i = "aprobe", "p0"
        put = lambda a=a, i=i, k=k: etcd_call(url, "/v3/kv/put", {
            "key": b64(f"/anyedge/instances/{a}/{i}"),
            "value": b64(instance_value(a, i, f"127.0.0.1:{30000 + k}"))})
        changes.append(one_change(proc, admin, put, name=f"etcd-{apps}x{instances}-{k}"))
    row["etcd"] = changes
    if BATCH:
        def put_k(k):
            a = f"a{(k * 7919 + 13) % max(apps, 1)}" if apps else "aprobe"
            i = "i1" if instances > 1 else ("i0" if apps else "p0")
            etcd_call(url, "/v3/kv/put", {
                "key": b64(f"/anyedge/instances/{a}/{i}"),
                "value": b64(instance_value(a, i, f"127.0.0.1:{31000 + k}"))})
        row["batch"] = batch_changes(proc, admin, put_k, BATCH)
    # Served: the probe app's one instance moves from a dead address to the backend.
    moved = f"127.0.0.1:{backend.server_address[1]}"
    t0 = time.monotonic()
    etcd_call(url, "/v3/kv/put", {"key": b64("/anyedge/instances/aprobe/p0"),
                                  "value": b64(instance_value("aprobe", "p0", moved))})
    end = t0 + 30
    while not served_via(port, "aprobe.example"):
        if time.monotonic() > end:
            raise SystemExit("the moved instance was never served")
        time.sleep(0.002)
    row["served"] = time.monotonic() - t0
    stop(proc)
    stop(etcd)
    backend.shutdown()
    return row


def med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def main():
    work = tempfile.mkdtemp(prefix="anyedge-scale-")
    rows = []
    try:
        for apps, instances in SIZES:
            if FILE:
                rows.append(file_size(apps, instances, work))
                print(json.dumps(rows[-1]), flush=True)
            if ETCD:
                rows.append(etcd_size(apps, instances, work))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nanyedge: {ANYEDGE}; medians of {CHANGES} changes\n")
    print("| store | apps x instances | start s | RSS MiB | start peak MiB | change wall ms | "
          "change CPU ms | reload peak MiB | slowest /healthz ms | served ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ch = r.get("file") or r.get("etcd") or []
        store = "file" if "file" in r else "etcd"
        print(f"| {store} | {r['apps']} x {r['instances']} | {r['start']:.2f} | "
              f"{r['rss_kib'] / 1024:.0f} | {r.get('start_peak_kib', 0) / 1024:.0f} | "
              f"{med([c['wall'] for c in ch]) * 1e3:.1f} | {med([c['cpu'] for c in ch]) * 1e3:.0f} | "
              f"{med([c['peak_kib'] for c in ch]) / 1024:.0f} | "
              f"{med([c['healthz_worst'] for c in ch]) * 1e3:.1f} | "
              f"{r['served'] * 1e3:.1f} |" if "served" in r else
              f"| {store} | {r['apps']} x {r['instances']} | {r['start']:.2f} | "
              f"{r['rss_kib'] / 1024:.0f} | {r.get('start_peak_kib', 0) / 1024:.0f} | "
              f"{med([c['wall'] for c in ch]) * 1e3:.1f} | {med([c['cpu'] for c in ch]) * 1e3:.0f} | "
              f"{med([c['peak_kib'] for c in ch]) / 1024:.0f} | "
              f"{med([c['healthz_worst'] for c in ch]) * 1e3:.1f} | |")
    for r in rows:
        if "batch" in r:
            b = r["batch"]
            print(f"\netcd {r['apps']} x {r['instances']}: {b['changes']} changes made "
                  f"{b['generations']} generations, {b['cpu_per_change'] * 1e3:.2f} ms of CPU each "
                  f"(idle rate {b['idle_rate'] * 1e3:.1f} ms/s subtracted)")
    base = {(r["apps"], r["instances"]): r["rss_kib"] for r in rows if "file" in r}
    for (a, i), rss in base.items():
        if i == 1 and (0, 0) in base and a:
            print(f"\nRSS per app (file, {a} apps): {(rss - base[(0, 0)]) * 1024 / a:.0f} B")
        if i > 1 and (a, 1) in base:
            per = (rss - base[(a, 1)]) * 1024 / (a * (i - 1))
            print(f"RSS per instance (file, {a} apps x {i}): {per:.0f} B")


if __name__ == "__main__":
    main()
