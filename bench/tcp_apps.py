#!/usr/bin/env python3
"""Real TCP applications through a proxy: `pgbench -S` and `redis-benchmark`, on loopback.

Starts a PostgreSQL server (initialised with `pgbench -i -s 10`) and a redis-server, then runs,
interleaved and repeated, against each target: `direct`, `haproxy` (mode tcp) and `anyedge`
(two raw-TCP apps, configured by bench/anyedge.sh exactly as for tcp_bulk):

  pgbench -S -c 16 -j 2 -T DURATION -n        (select-only; one connection per client)
  redis-benchmark -t get,set -c 50 -n N -q    (and again with -P 16)

Pinning as in bench.py: load generators on LOADGEN_CPUS (0), servers and proxies on SERVER_CPUS
(1), one worker/thread per proxy, logs off everywhere. Reports medians and min-max of the
throughput, the proxy's CPU µs per transaction (utime+stime of its process tree from
/proc/<pid>/stat, divided by the transactions of the run), the ratio anyedge/HAProxy, and the CPU
used meanwhile by processes the harness did not start (foreign load).

  bench/tcp_apps.py                                   # REPS=5, DURATION=10
  REPS=1 DURATION=3 REDIS_N=20000 bench/tcp_apps.py   # smoke run
  ANYEDGE=/path/to/anyedge OUT=bench/results/x.md bench/tcp_apps.py

Everything started is stopped by pid/process group on exit, error and SIGINT/SIGTERM/SIGHUP.
See bench/README.md ("tcp_apps.py").
"""
import datetime as _dt
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (the harness: Proc, CPU accounting, quiet gate, bounded runs)

HOST = B.HOST
env = B.env
log = B.log


class Cfg:
    reps = int(env("REPS", "5"))
    duration = int(env("DURATION", "10"))
    redis_n = int(env("REDIS_N", "200000"))
    redis_n_pipelined = int(env("REDIS_N_PIPELINED", str(5 * int(env("REDIS_N", "200000")))))
    pg_scale = int(env("PG_SCALE", "10"))
    pg_clients = int(env("PG_CLIENTS", "16"))
    pg_threads = int(env("PG_THREADS", "2"))
    redis_clients = int(env("REDIS_CLIENTS", "50"))
    loadgen_cpus = os.environ.get("LOADGEN_CPUS", "0")
    server_cpus = os.environ.get("SERVER_CPUS", "1")
    settle = float(env("SETTLE", "1"))
    wait_quiet = float(env("WAIT_QUIET", "120"))
    quiet_max_busy = float(env("QUIET_MAX_BUSY", "10"))
    port_offset = int(env("PORT_OFFSET", "0"))
    targets = env("TARGETS", "direct,haproxy,anyedge")
    out = os.environ.get("OUT", "")
    initdb = env("INITDB", "/usr/local/bin/initdb")
    postgres = env("POSTGRES", "/usr/local/bin/postgres")
    pg_user = env("PG_RUN_AS", "nobody")  # postgres refuses to run as root
    anyedge = os.environ.get("ANYEDGE", "")


def stat_cpu_s(root):
    """utime+stime+cutime+cstime (s) of every process in the tree of `root` (/proc/<pid>/stat, clock
    ticks). The c* fields hold the children that exited and were reaped (a PostgreSQL backend ends
    with its connection, at the end of the run, and is then only in the postmaster's cutime); a
    live child is counted by its own stat, so nothing is counted twice."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in B.tree_pids(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime (fields 14-17)
        except (OSError, ValueError, IndexError):
            pass
    return total / tck


def pct(v):
    return f"{v:.0f}%"


class Target:
    def __init__(self, name, pg, redis, proc):
        self.name, self.pg, self.redis, self.proc = name, pg, redis, proc
        self.broken = None


def measure(cfg, target, servers, argv, limit, parse):
    """One bounded load run with CPU accounting: the proxy's tree (or, for direct, nothing), the
    servers', and the foreign CPU (all cores busy minus ours minus the load generator)."""
    p0 = stat_cpu_s(target.proc.pid) if target.proc else 0.0
    s0 = sum(stat_cpu_s(s.pid) for s in servers)
    ours0 = B.ours_cpu_s()
    st0 = B.proc_stat()
    out, rc, wall, lg_cpu = B.run_bounded(argv, limit)
    st1 = B.proc_stat()
    ours1 = B.ours_cpu_s()
    p1 = stat_cpu_s(target.proc.pid) if target.proc else 0.0
    s1 = sum(stat_cpu_s(s.pid) for s in servers)
    r = parse(out)
    if rc != 0 or r is None:
        return {"error": f"rc={rc}: {out[-300:]!r}"}
    r["wall_s"] = wall
    r["proxy_cpu_s"] = p1 - p0 if target.proc else None
    r["server_cpu_s"] = s1 - s0
    r["loadgen_cpu_s"] = lg_cpu
    r["foreign_cpu_pct"] = max(0.0, 100.0 * (B.cores_busy_s(st0, st1) - (ours1 - ours0) - lg_cpu) / wall)
    busy, _ = B.busy_pct(st0, st1, B.parse_cpulist(cfg.server_cpus) if cfg.server_cpus else [])
    r["server_cores_busy_pct"] = busy
    n = r["txns"]
    if n:
        r["proxy_us_per_txn"] = 1e6 * r["proxy_cpu_s"] / n if target.proc else None
        r["server_us_per_txn"] = 1e6 * r["server_cpu_s"] / n
    return r


def parse_pgbench(out):
    m_tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", out, re.M)
    m_n = re.search(r"^number of transactions actually processed: (\d+)", out, re.M)
    m_fail = re.search(r"^number of failed transactions: (\d+)", out, re.M)
    if not (m_tps and m_n):
        return None
    return {"tps": {"select": float(m_tps.group(1))}, "txns": int(m_n.group(1)),
            "errors": int(m_fail.group(1)) if m_fail else 0}


def parse_redis(n_per_test):
    def parse(out):
        # -q prints progress lines ending in \r and one final line per test
        got = {}
        for line in re.split(r"[\r\n]+", out):
            m = re.match(r"^\s*(\w+): ([\d.]+) requests per second", line)
            if m:
                got[m.group(1).lower()] = float(m.group(2))
        if "get" not in got or "set" not in got:
            return None
        return {"tps": {"set": got["set"], "get": got["get"]}, "txns": 2 * n_per_test, "errors": 0}
    return parse


def summarize(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def main():
    cfg = Cfg()
    for tool in ("haproxy", "pgbench", "redis-server", "redis-benchmark", "taskset", "timeout", "setpriv",
                 cfg.initdb, cfg.postgres):
        if not shutil.which(tool):
            raise SystemExit(f"missing tool: {tool} (apt-get install -y haproxy redis-server postgresql-client)")
    wanted = [t for t in cfg.targets.split(",") if t]
    if "anyedge" in wanted and not (cfg.anyedge and os.access(cfg.anyedge, os.X_OK)):
        raise SystemExit(f"ANYEDGE={cfg.anyedge!r} is not an executable (cargo build --release -p anyedge)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = os.path.abspath(os.environ.get("WORKDIR") or os.path.join(B.BENCH_DIR, ".run", f"tcp-apps-{stamp}"))
    os.makedirs(workdir, exist_ok=True)
    o = cfg.port_offset
    P = lambda p: f"{HOST}:{p + o}"  # below the ephemeral range, like bench.py
    ports = {"direct": (P(18401), P(18402)), "haproxy": (P(29401), P(29402)), "anyedge": (P(30401), P(30402))}
    inuse = [a for k, v in ports.items() if k == "direct" or k in wanted for a in v if B.port_open(a)]
    if inuse:
        raise SystemExit(f"ports already in use: {inuse} (use PORT_OFFSET)")
    nofile = B.resource.getrlimit(B.resource.RLIMIT_NOFILE)[0]
    be_pg, be_redis = ports["direct"]

    # PostgreSQL in a private temp dir owned by PG_RUN_AS (postgres refuses root)
    pgdir = tempfile.mkdtemp(prefix="tcpbench-pg-", dir="/var/tmp")
    pgdata = os.path.join(pgdir, "data")
    drop = ["setpriv", f"--reuid={cfg.pg_user}", f"--regid={cfg.pg_user}" if cfg.pg_user != "nobody" else "--regid=nogroup",
            "--clear-groups"] if os.geteuid() == 0 else []
    if drop:
        shutil.chown(pgdir, user=cfg.pg_user)
    os.chmod(pgdir, 0o700)

    targets, procs = [], []
    pg = B.Proc("postgres", drop + [cfg.postgres, "-D", pgdata, "-h", HOST, "-p", be_pg.rsplit(":", 1)[1],
                                    "-k", pgdir, "-c", "fsync=off", "-c", "max_connections=100",
                                    "-c", "logging_collector=off"],
                os.path.join(workdir, "postgres.log"), cfg.server_cpus, cwd=pgdir)
    redis = B.Proc("redis-server", ["redis-server", "--bind", HOST, "--port", be_redis.rsplit(":", 1)[1],
                                    "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                    "--daemonize", "no", "--loglevel", "warning", "--dir", workdir],
                   os.path.join(workdir, "redis.log"), cfg.server_cpus)
    targets.append(Target("direct", be_pg, be_redis, None))
    if "haproxy" in wanted:
        hdir = os.path.join(workdir, "haproxy")
        os.makedirs(hdir, exist_ok=True)
        l_pg, l_redis = ports["haproxy"]
        B.render("tcp-apps-haproxy.cfg.tmpl", os.path.join(hdir, "haproxy.cfg"), {
            "MAXCONN": 4096, "NOFILE": nofile, "LISTEN_PG": l_pg, "BACKEND_PG": be_pg,
            "LISTEN_REDIS": l_redis, "BACKEND_REDIS": be_redis})
        targets.append(Target("haproxy", l_pg, l_redis,
                              B.Proc("haproxy", ["haproxy", "-db", "-f", os.path.join(hdir, "haproxy.cfg")],
                                     os.path.join(hdir, "log.txt"), cfg.server_cpus)))
    if "anyedge" in wanted:
        adir = os.path.join(workdir, "anyedge")
        os.makedirs(adir, exist_ok=True)
        l_pg, l_redis = ports["anyedge"]
        penv = dict(os.environ)
        # anyedge.sh's two raw-TCP apps: bench-tcp -> PostgreSQL, bench-idle -> redis
        penv.update({"ANYEDGE": cfg.anyedge, "PROXY_TCP_ONLY": "1", "PROXY_WORKERS": "1",
                     "PROXY_WORKDIR": adir, "PROXY_LISTEN_HTTP_PORT": str(30400 + o),
                     "PROXY_LISTEN_TCP_PORT": l_pg.rsplit(":", 1)[1], "PROXY_UPSTREAM_TCP": be_pg,
                     "PROXY_LISTEN_TCP_IDLE_PORT": l_redis.rsplit(":", 1)[1], "PROXY_UPSTREAM_TCP_IDLE": be_redis})
        targets.append(Target("anyedge", l_pg, l_redis,
                              B.Proc("anyedge", ["bash", os.path.join(B.BENCH_DIR, "anyedge.sh")],
                                     os.path.join(adir, "log.txt"), cfg.server_cpus, env=penv)))

    def on_signal(sig, frame):
        log(f"signal {sig}: stopping everything we started")
        for p in list(B.LOADGEN):
            try:
                p.terminate()
            except OSError:
                pass
        B.stop_all()
        shutil.rmtree(pgdir, ignore_errors=True)
        sys.exit(130)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    os.environ["PGDATABASE"] = "postgres"  # pgbench tables live in the default database
    lg = ["taskset", "-c", cfg.loadgen_cpus] if cfg.loadgen_cpus else []
    pg_conn = ["-h", None, "-p", None, "-U", "postgres"]

    def pgargs(addr):
        a = list(pg_conn)
        a[1], a[3] = addr.rsplit(":", 1)
        return a

    commands = {}
    results = {}  # row -> target -> [run]
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.monotonic()
    quiet = None
    try:
        if cfg.wait_quiet > 0:
            quiet = B.wait_quiet(cfg.wait_quiet, cfg.quiet_max_busy)
            log(f"quiet check: {quiet[1]:.0f}% of all cores busy after {quiet[0]:.0f} s"
                + ("" if quiet[2] else " -- NOT quiet, running anyway; foreign CPU is reported per cell"))
        with open("/proc/loadavg") as f:
            loadavg_start = " ".join(f.read().split()[:3])
        log(f"initdb + pgbench -i -s {cfg.pg_scale} in {pgdir}")
        r = subprocess.run(drop + [cfg.initdb, "-D", pgdata, "-U", "postgres", "--auth=trust", "--no-sync"],
                           capture_output=True, text=True, timeout=300, cwd=pgdir)
        if r.returncode != 0:
            raise SystemExit(f"initdb failed: {r.stderr[-500:]}")
        pg.start()
        redis.start()
        for a, p in ((be_pg, pg), (be_redis, redis)):
            if not B.wait_port(a, 60, p):
                raise SystemExit(f"{p.name} did not open {a}; see {p.logfile}")
        r = subprocess.run(["pgbench", "-i", "-q", "-s", str(cfg.pg_scale)] + pgargs(be_pg),
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise SystemExit(f"pgbench -i failed: {r.stderr[-500:]}")
        for t in targets:
            if not t.proc:
                continue
            t.proc.start()
            if not all(B.wait_port(a, 20, t.proc) for a in (t.pg, t.redis)):
                t.broken = f"listeners never opened (see {t.proc.logfile})"
                log(f"{t.name}: {t.broken}")
        live = [t for t in targets if not t.broken]
        log("warm-up (not recorded)")
        for t in live:
            B.run_bounded(lg + ["pgbench", "-S", "-n", "-c", "4", "-T", "2"] + pgargs(t.pg), 30)
            host, port = t.redis.rsplit(":", 1)
            B.run_bounded(lg + ["redis-benchmark", "-h", host, "-p", port, "-t", "get,set", "-n", "10000", "-q"], 60)

        scenarios = [
            ("pgbench", None),
            ("redis", 1),
            ("redis", 16),
        ]
        for rep in range(cfg.reps):
            order = live[rep % len(live):] + live[:rep % len(live)]
            for sc, pipe in scenarios:
                for t in order:
                    if t.proc and not t.proc.alive():
                        t.broken = f"process died (see {t.proc.logfile})"
                    if t.broken:
                        continue
                    if sc == "pgbench":
                        argv = lg + ["pgbench", "-S", "-n", "-c", str(cfg.pg_clients), "-j", str(cfg.pg_threads),
                                     "-T", str(cfg.duration)] + pgargs(t.pg)
                        r = measure(cfg, t, [pg], argv, cfg.duration + 60, parse_pgbench)
                        key = "pgbench -S"
                    else:
                        n = cfg.redis_n if pipe == 1 else cfg.redis_n_pipelined
                        host, port = t.redis.rsplit(":", 1)
                        argv = lg + ["redis-benchmark", "-h", host, "-p", port, "-t", "get,set",
                                     "-c", str(cfg.redis_clients), "-n", str(n), "-q"] + (
                                         ["-P", str(pipe)] if pipe > 1 else [])
                        r = measure(cfg, t, [redis], argv, 600, parse_redis(n))
                        key = "redis" + (f" -P {pipe}" if pipe > 1 else "")
                    commands.setdefault(key, B.cmd_str(argv))
                    results.setdefault(key, {}).setdefault(t.name, []).append(r)
                    log(f"rep {rep + 1}/{cfg.reps} {key:11s} {t.name:8s} "
                        + (" ".join(f"{k}={v:,.0f}/s" for k, v in r["tps"].items())
                           + (f" proxy={r['proxy_us_per_txn']:.2f}us/txn" if r.get("proxy_us_per_txn") else "")
                           + f" foreign={r['foreign_cpu_pct']:.0f}%" if "tps" in r else r["error"]))
                    time.sleep(cfg.settle)
    finally:
        B.stop_all()
        shutil.rmtree(pgdir, ignore_errors=True)

    elapsed = time.monotonic() - t_start
    report = build_report(cfg, targets, results, commands, started, elapsed, quiet, loadavg_start)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(report)
    with open(os.path.join(workdir, "raw.json"), "w") as f:
        B.json.dump(results, f, indent=1)
    if cfg.out:
        with open(cfg.out, "w") as f:
            f.write(report)
    print(report)


def fmt_cell(s, digits=0, unit=""):
    if s is None:
        return "n/a"
    med, lo, hi = s
    f = f"{{:,.{digits}f}}"
    return f"{f.format(med)}{unit} ({f.format(lo)}–{f.format(hi)})"


def build_report(cfg, targets, results, commands, started, elapsed, quiet, loadavg_start):
    names = [t.name for t in targets]
    L = [f"# TCP apps through a proxy: pgbench -S and redis-benchmark ({started})", ""]
    L.append(f"- {cfg.reps} repetitions per cell, interleaved (the target order rotates each repetition); "
             "cells: median (min–max)")
    L.append(f"- load generators on CPU {cfg.loadgen_cpus or 'any'}; PostgreSQL, redis and the proxies on CPU "
             f"{cfg.server_cpus or 'any'}; one thread/worker per proxy; no access logs anywhere")
    L.append(f"- PostgreSQL initialised with `pgbench -i -s {cfg.pg_scale}`; fsync=off (the run is select-only)")
    L.append("- CPU µs/txn: the proxy's utime+stime (+ reaped children's; /proc/<pid>/stat, its process tree) over the run, "
             "divided by the run's transactions (redis: SET + GET requests of the run)")
    L.append("- foreign CPU: CPU used during the run by processes this harness did not start, in % of one "
             "core (all cores busy − ours − the load generator's)")
    L.append(f"- load average at start: {loadavg_start}"
             + (f"; quiet check: {quiet[1]:.0f}% of all cores busy after waiting {quiet[0]:.0f} s"
                + ("" if quiet[2] else " (**not quiet**: numbers may be disturbed)") if quiet else ""))
    L.append(f"- run time {elapsed / 60:.1f} min")
    broken = [t for t in targets if t.broken]
    for t in broken:
        L.append(f"- **{t.name} broken**: {t.broken}")
    L.append("")
    hdr = "| row | " + " | ".join(names) + " | anyedge / haproxy |"
    L += ["## Throughput (transactions or requests per second)", "", hdr,
          "|---|" + "---|" * len(names) + "---|"]
    rows = []
    for key, per in results.items():
        subs = sorted({k for runs in per.values() for r in runs if "tps" in r for k in r["tps"]},
                      key=lambda k: ["select", "set", "get"].index(k))
        for sub in subs:
            rows.append((key, sub))
    for key, sub in rows:
        per = results[key]
        cells, meds = [], {}
        for n in names:
            s = summarize([r["tps"][sub] for r in per.get(n, []) if "tps" in r])
            meds[n] = s[0] if s else None
            cells.append(fmt_cell(s))
        ratio = (f"{meds['anyedge'] / meds['haproxy']:.3f}"
                 if meds.get("anyedge") and meds.get("haproxy") else "n/a")
        L.append(f"| {key} {sub.upper()} | " + " | ".join(cells) + f" | **{ratio}** |")
    L += ["", "## Proxy CPU µs per transaction (lower is better)", "",
          "| row | " + " | ".join(n for n in names if n != "direct") + " | anyedge / haproxy |",
          "|---|" + "---|" * len([n for n in names if n != "direct"]) + "---|"]
    for key, per in results.items():
        cells, meds = [], {}
        for n in names:
            if n == "direct":
                continue
            s = summarize([r.get("proxy_us_per_txn") for r in per.get(n, []) if "tps" in r])
            meds[n] = s[0] if s else None
            cells.append(fmt_cell(s, 2))
        ratio = (f"{meds['anyedge'] / meds['haproxy']:.3f}"
                 if meds.get("anyedge") and meds.get("haproxy") else "n/a")
        L.append(f"| {key} | " + " | ".join(cells) + f" | {ratio} |")
    L += ["", "## Server CPU µs per transaction and foreign load", "",
          "| row | target | server (postgres / redis) µs/txn | CPU " + (cfg.server_cpus or "all")
          + " busy | foreign CPU, % of one core: median (min–max) |", "|---|---|---|---|---|"]
    for key, per in results.items():
        for n in names:
            runs = [r for r in per.get(n, []) if "tps" in r]
            if not runs:
                continue
            L.append(f"| {key} | {n} | {fmt_cell(summarize([r.get('server_us_per_txn') for r in runs]), 2)} | "
                     f"{fmt_cell(summarize([r['server_cores_busy_pct'] for r in runs]), 0, '%')} | "
                     f"{fmt_cell(summarize([r['foreign_cpu_pct'] for r in runs]), 0, '%')} |")
    errs = [(key, n, r["error"]) for key, per in results.items() for n, runs in per.items()
            for r in runs if "error" in r]
    errs += [(key, n, f"{r['errors']} failed transactions") for key, per in results.items()
             for n, runs in per.items() for r in runs if r.get("errors")]
    if errs:
        L += ["", "## Errors", ""] + [f"- {k} {n}: {e}" for k, n, e in errs]
    L += ["", "## Commands (first target shown; the port differs per target)", ""]
    L += [f"- {k}: `{c}`" for k, c in commands.items()]
    L += ["", "Versions: " + "; ".join(filter(None, [
        first_line(["haproxy", "-v"]), first_line(["redis-server", "--version"]),
        first_line([cfg.postgres, "--version"]), first_line(["pgbench", "--version"]),
        f"anyedge {cfg.anyedge}" if cfg.anyedge else None])), ""]
    return "\n".join(L).replace(B.BENCH_DIR, "$BENCH")


def first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception:
        return None


if __name__ == "__main__":
    main()
