"""A gRPC event subscriber for bench/events/e2e.py, run as its own process.

Opens ``--streams`` EventService.Subscribe streams on the agent's unix socket
(no filter: every event) and counts, per stream, the events and the in-band
``lost`` counts it receives. Batches are decoded with
:func:`fwd.api.fastwire.scan_batch` (a raw codec hands over the bytes): a
betterproto2 parse of every event would make this process, not the agent, the
bottleneck. The first event of each stream is parsed in full, to check that
what arrives is the bench rule's events.

Protocol on stdin/stdout (one line each):
  stdin ``expect K T0 T1``: the kernel emitted K records for each stream (dropped
  - suppressed - ring full); finish once every stream has received + lost == K
  (or after ``--timeout`` s), and count the events received in [T0, T1]
  (CLOCK_MONOTONIC, the flood). stdout: one JSON object with the counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.proto import ProtoCodec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fwd.api.fastwire import scan_batch
from fwd.api.gen.fwd import v1 as pb


class RawEventsCodec(ProtoCodec):
    """Hands EventBatch messages over as their wire bytes; everything else as usual."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is pb.EventBatch:
            return data
        return super().decode(data, message_type)


class Stream:
    def __init__(self) -> None:
        self.received = 0
        self.lost = 0
        self.batches: list[tuple[float, int]] = []  # (monotonic time, events)
        self.first: pb.Event | None = None


async def follow(channel: Channel, stream: Stream) -> None:
    async with channel.request(
        "/fwd.v1.EventService/Subscribe", Cardinality.UNARY_STREAM, pb.SubscribeRequest,
        pb.EventBatch,
    ) as call:
        await call.send_message(pb.SubscribeRequest(), end=True)
        async for data in call:
            raw: bytes = data  # type: ignore[assignment] - RawEventsCodec
            n, lost = scan_batch(raw)
            if n and stream.first is None:
                stream.first = pb.EventBatch.parse(raw).events[0]
            stream.received += n
            stream.lost += lost
            stream.batches.append((time.monotonic(), n))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    streams = [Stream() for _ in range(args.streams)]
    channel = Channel(path=args.socket, codec=RawEventsCodec())
    try:
        async with anyio.create_task_group() as tg:
            for s in streams:
                tg.start_soon(follow, channel, s)
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            _, k, t0, t1 = line.split()
            expect, start, end = int(k), float(t0), float(t1)
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                if all(s.received + s.lost >= expect for s in streams):
                    await anyio.sleep(0.3)  # anything beyond K would be a mismatch too
                    break
                await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    finally:
        channel.close()
    out = []
    for s in streams:
        times = [t for t, n in s.batches if n]
        out.append({
            "received": s.received,
            "lost": s.lost,
            "in_flood": sum(n for t, n in s.batches if start <= t <= end),
            "first_t": min(times, default=0.0),
            "last_t": max(times, default=0.0),
            "rule_id": s.first.rule_id if s.first else "",
        })
    return {"expect": expect, "streams": out}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    print(json.dumps(anyio.run(main_async, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
