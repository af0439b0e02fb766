#!/usr/bin/env python3
"""Bounded UDP traffic for the demo and the end-to-end tests (standard library only).

  udp.py recv --bind ADDR --ports 9998,9999 --seconds S   -> prints {"9998": n, ...} as JSON
  udp.py send --to ADDR --port P --count N [--size B]      -> sends N datagrams, prints N

The receiver prints "ready" on stderr once its sockets are bound, and stops
after --seconds or once --expect datagrams arrived, whichever is first.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time


def recv(bind: str, ports: list[int], seconds: float, expect: int) -> dict[str, int]:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sel = selectors.DefaultSelector()
    counts = {str(p): 0 for p in ports}
    for port in ports:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((bind, port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, str(port))
    print("ready", file=sys.stderr, flush=True)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(timeout=min(left, 0.1)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            while True:
                try:
                    sock.recv(65535)
                except BlockingIOError:
                    break
                counts[key.data] += 1
        if expect and sum(counts.values()) >= expect:
            break
    return counts


def send(to: str, port: int, count: int, size: int, interval: float) -> int:
    family = socket.AF_INET6 if ":" in to else socket.AF_INET
    payload = b"x" * size
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(payload, (to, port))
            if interval:
                time.sleep(interval)
    return count


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--ports", required=True, help="comma-separated")
    r.add_argument("--seconds", type=float, default=3.0)
    r.add_argument("--expect", type=int, default=0, help="stop early after this many")
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--interval", type=float, default=0.001)
    a = p.parse_args()
    if a.cmd == "recv":
        ports = [int(x) for x in a.ports.split(",")]
        print(json.dumps(recv(a.bind, ports, min(a.seconds, 60.0), a.expect)))
    else:
        print(send(a.to, a.port, min(a.count, 1_000_000), a.size, a.interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
