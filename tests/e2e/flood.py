#!/usr/bin/env python3
"""Bounded UDP flood for the survival tests (standard library only).

  flood.py send --to ADDR --port P --control C --stop FILE   -> {"P": n, "C": m} as JSON
  flood.py recv --bind ADDR --ports P,C --stop FILE          -> {"P": n, "C": m} as JSON

The sender sends bursts to ``--port`` with one datagram to ``--control`` after
each burst, until FILE exists, --max-seconds pass or --max-count datagrams went
out (whichever is first). The receiver prints "ready" on stderr once bound and
counts until FILE exists plus --grace seconds (packets still in flight), or
--max-seconds. Both are bounded in count and time whatever the caller does.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time


def send(to: str, port: int, control: int, stop: str, seconds: float, count: int,
         burst: int, pause: float) -> dict[str, int]:
    sent = {str(port): 0, str(control): 0}
    deadline = time.monotonic() + seconds
    payload = b"f" * 32
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while sent[str(port)] < count and time.monotonic() < deadline:
            if os.path.exists(stop):
                break
            for _ in range(burst):
                s.sendto(payload, (to, port))
            sent[str(port)] += burst
            s.sendto(payload, (to, control))
            sent[str(control)] += 1
            time.sleep(pause)
    return sent


def recv(bind: str, ports: list[int], stop: str, grace: float, seconds: float) -> dict[str, int]:
    sel = selectors.DefaultSelector()
    counts = {str(p): 0 for p in ports}
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((bind, port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, str(port))
    print("ready", file=sys.stderr, flush=True)
    deadline = time.monotonic() + seconds
    stopping_at: float | None = None
    while time.monotonic() < deadline:
        if stopping_at is None and os.path.exists(stop):
            stopping_at = time.monotonic() + grace
        if stopping_at is not None and time.monotonic() >= stopping_at:
            break
        for key, _ in sel.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            while True:
                try:
                    sock.recv(65535)
                except BlockingIOError:
                    break
                counts[key.data] += 1
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--control", type=int, required=True)
    s.add_argument("--stop", required=True)
    s.add_argument("--max-seconds", type=float, default=30.0)
    s.add_argument("--max-count", type=int, default=1_000_000)
    s.add_argument("--burst", type=int, default=32)
    s.add_argument("--pause", type=float, default=0.001)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--ports", required=True, help="comma-separated")
    r.add_argument("--stop", required=True)
    r.add_argument("--grace", type=float, default=1.0)
    r.add_argument("--max-seconds", type=float, default=60.0)
    a = p.parse_args()
    if a.cmd == "send":
        out = send(a.to, a.port, a.control, a.stop, min(a.max_seconds, 120.0),
                   min(a.max_count, 5_000_000), a.burst, a.pause)
    else:
        out = recv(a.bind, [int(x) for x in a.ports.split(",")], a.stop, a.grace,
                   min(a.max_seconds, 180.0))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
