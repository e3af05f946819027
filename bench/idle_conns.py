#!/usr/bin/env python3
"""Open N connections, confirm each one end to end, then hold them idle.

--mode http (default): HTTP/1.1 keep-alive, one request (GET --path) on each connection.
--mode echo: raw TCP to an echo origin (tcp_idle_origin.py), directly or through a TCP proxy;
one short line is sent and must come back, proving the connection reaches the origin.

Prints one line "READY {json}" on stdout once all connections are established and
idle, then holds them until stdin is closed (or --hold seconds pass, whichever is
first), then closes everything and exits. Loopback only.

In echo mode the DONE line also reports how many connections still echo after the hold
(a second round trip on every connection, after the memory was sampled).

Usage: idle_conns.py HOST PORT N [--mode http|echo] [--path /ok] [--parallel 256] [--hold 120]
"""
import argparse
import asyncio
import json
import resource
import sys
import time


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def one(host, port, path, sem, timeout):
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        writer.write(req)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        if length:
            await asyncio.wait_for(reader.readexactly(length), timeout)
        return status, reader, writer


async def one_echo(host, port, sem, timeout):
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        ok = await echo_once(reader, writer, timeout)
        return (200 if ok else 0), reader, writer


async def echo_once(reader, writer, timeout):
    msg = b"ping\n"
    writer.write(msg)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(msg)), timeout)
    return got == msg


async def recheck(conns, parallel, timeout):
    sem = asyncio.Semaphore(parallel)

    async def chk(rd, w):
        async with sem:
            try:
                return await echo_once(rd, w, timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                return False
    res = await asyncio.gather(*(chk(rd, w) for rd, w in conns))
    return sum(1 for r in res if r)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--mode", choices=("http", "echo"), default="http")
    ap.add_argument("--path", default="/ok")
    ap.add_argument("--parallel", type=int, default=256,
                    help="max connections being set up at once (also bounds upstream fan-out)")
    ap.add_argument("--hold", type=float, default=120.0, help="max seconds to hold")
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()
    if not (a.host.startswith("127.") or a.host in ("::1", "localhost")):
        sys.exit("loopback only")
    raise_nofile(a.n + 256)

    t0 = time.monotonic()
    sem = asyncio.Semaphore(a.parallel)
    if a.mode == "echo":
        coros = [one_echo(a.host, a.port, sem, a.timeout) for _ in range(a.n)]
    else:
        coros = [one(a.host, a.port, a.path, sem, a.timeout) for _ in range(a.n)]
    results = await asyncio.gather(*coros, return_exceptions=True)
    conns, errors, bad_status = [], 0, 0
    first_err = None
    for r in results:
        if isinstance(r, BaseException):
            errors += 1
            first_err = first_err or repr(r)
        else:
            status, rd, w = r
            if status != 200:
                bad_status += 1
            conns.append((rd, w))
    info = {"requested": a.n, "established": len(conns), "errors": errors,
            "non_200": bad_status, "setup_s": round(time.monotonic() - t0, 3),
            "first_error": first_err}
    print("READY " + json.dumps(info), flush=True)

    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    try:
        await asyncio.wait_for(asyncio.shield(stdin_closed), a.hold)
    except asyncio.TimeoutError:
        pass
    await asyncio.sleep(0)  # let pending EOFs be delivered
    still_open = sum(1 for rd, w in conns if not rd.at_eof() and not w.transport.is_closing())
    done = {"still_open_at_end": still_open}
    if a.mode == "echo":
        done["still_echo_at_end"] = await recheck(conns, a.parallel, a.timeout)
    for _, w in conns:
        w.close()
    print("DONE " + json.dumps(done), flush=True)
    # Do not wait on the stdin reader thread if we timed out.
    sys.stdout.flush()
    import os
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
