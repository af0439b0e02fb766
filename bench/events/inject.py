"""Flood injector for bench/events: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES.

Runs inside the sender namespace (``ip netns exec``): an XDP program that
returns XDP_TX is "run" on the sender veth with live frames, so each frame is
really transmitted to the peer veth, where the fwd program sees it. Bounded by
``--seconds`` and ``--max-packets``; ``--pps`` paces it (chunks of
0.1 s worth, sleeping between them: a live-frames test run has a high fixed cost). Prints ``packets seconds start`` on exit (``start``: CLOCK_MONOTONIC
at the first packet, to line the flood up with other processes' clocks).
"""

from __future__ import annotations

import argparse
import ctypes
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fwd.kernel import libbpf  # noqa: E402
from fwd.kernel.objects import BpfObject  # noqa: E402

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--obj", required=True, help="compiled XDP_TX program")
    ap.add_argument("--dev", required=True)
    ap.add_argument("--frame-hex", required=True)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--max-packets", type=int, default=50_000_000)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--pps", type=float, default=0.0, help="pace to this rate (0: as fast as it goes)")
    args = ap.parse_args()
    ifindex = socket.if_nametoindex(args.dev)
    frame = bytes.fromhex(args.frame_hex)
    with BpfObject.open(args.obj) as obj:
        obj.load()
        fd = obj.program("tx").fd
        data = ctypes.create_string_buffer(frame, len(frame))
        ctx = libbpf.XdpMd(data=0, data_end=len(frame), ingress_ifindex=ifindex)
        chunk = args.chunk if not args.pps else max(1, min(args.chunk, int(args.pps / 10)))
        sent, start, start_mono = 0, time.perf_counter(), time.monotonic()
        while time.perf_counter() - start < args.seconds and sent < args.max_packets:
            if args.pps:
                ahead = sent / args.pps - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)
            opts = libbpf.new_opts(libbpf.TestRunOpts)
            opts.data_in = ctypes.addressof(data)
            opts.data_size_in = len(frame)
            opts.ctx_in = ctypes.addressof(ctx)
            opts.ctx_size_in = ctypes.sizeof(ctx)
            opts.repeat = min(chunk, args.max_packets - sent)
            opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
            opts.batch_size = 64
            libbpf.check(int(libbpf.bpf_prog_test_run_opts(fd, ctypes.byref(opts))), "live frames")
            sent += opts.repeat
        print(sent, time.perf_counter() - start, start_mono, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
