#!/usr/bin/env python3
"""TCP origin for the tcp_idle_mem scenario: echoes whatever it receives and never closes first.

One thread, one epoll, sockets kept only as raw file descriptors (no per-connection Python
objects beyond an int in a set), so that it can hold tens of thousands of idle connections for a
few hundred bytes each. Loopback only. Stops on SIGTERM/SIGINT.

Usage: tcp_idle_origin.py HOST:PORT
"""
import errno
import os
import resource
import select
import signal
import socket
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    if not (host.startswith("127.") or host in ("::1", "localhost")):
        sys.exit("loopback only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(4096)
    ls.setblocking(False)
    lfd = ls.fileno()

    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    conns = set()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    print(f"tcp_idle_origin listening on {host}:{port}", flush=True)

    def drop(fd):
        conns.discard(fd)
        try:
            ep.unregister(fd)
        except OSError:
            pass
        os.close(fd)

    while not stop:
        try:
            events = ep.poll(1.0, 1024)
        except InterruptedError:
            continue
        for fd, ev in events:
            if fd == lfd:
                while True:
                    try:
                        c, _ = ls.accept()
                    except BlockingIOError:
                        break
                    except OSError as e:  # EMFILE etc.: report and retry on the next event
                        if e.errno in (errno.EMFILE, errno.ENFILE):
                            print(f"accept: {e}", file=sys.stderr, flush=True)
                        break
                    c.setblocking(False)
                    cfd = c.detach()
                    conns.add(cfd)
                    ep.register(cfd, select.EPOLLIN | select.EPOLLRDHUP)
                continue
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                drop(fd)
                continue
            if not data:
                drop(fd)
                continue
            try:
                os.write(fd, data)  # echo payloads are tiny: one write is enough
            except OSError:
                drop(fd)
    for fd in list(conns):
        os.close(fd)
    ls.close()


if __name__ == "__main__":
    main()
