"""The agent's own memory with a large policy (prints numbers; not a test).

Run as root from the repository root: ``.venv/bin/python bench/agent_rss.py [N]``.
Starts ``fwd agent`` in a throwaway network namespace (prefix ``$FWD_TEST_NS_PREFIX``
or ``fwdt``; bpffs pins under ``/sys/fs/bpf/<prefix>-rss-<pid>``, all removed at
the end), applies N (default 100,000) rules of each shape of bench/controlplane.py
over the gRPC API, and reads the agent's VmRSS and VmHWM (peak) from /proc after
each: the number the "agent RSS < 150 MB" target is about. The apply time printed
here is the whole API path (client encode, proto decode, validation, compile,
snapshot, commit), unlike controlplane.py's compile + apply.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import controlplane  # noqa: E402
from fwd.api.client import Client  # noqa: E402
from fwd.policy.model import Policy  # noqa: E402
from tests.e2e.agentproc import AgentProcess  # noqa: E402
from tests.netns import Netns, bpffs, default_prefix  # noqa: E402


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def apply(socket: str, policy: Policy) -> tuple[int, float]:
    async with Client(socket, timeout=300) as client:
        t0 = time.perf_counter()
        revision = await client.apply_policy(policy)
        return revision, time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    net = Netns()
    try:
        ns = net.make_netns()
        pins = bpffs() / f"{default_prefix()}-rss-{os.getpid()}"
        net.pin_dirs.append(pins)
        pins.mkdir()
        with tempfile.TemporaryDirectory() as work:
            agent = AgentProcess(ns, Path(work), pins, "--metrics", "", "--log-level", "info")
            agent.start()
            assert agent.proc is not None
            pid = agent.proc.pid  # nsenter execs the agent: same pid
            try:
                rss, peak = memory_mb(pid)
                print(f"agent idle: RSS {rss:.0f} MB")
                for shape in (controlplane.uniform, controlplane.mixed):
                    revision, took = asyncio.run(apply(agent.socket, Policy(rules=shape(n))))
                    time.sleep(1.0)  # the Datapath releases freed memory after replying
                    rss, peak = memory_mb(pid)
                    print(f"{n} {shape.__name__} rules (revision {revision}): API apply "
                          f"{took:.2f} s, RSS {rss:.0f} MB, peak {peak:.0f} MB")  # fmt: skip
            finally:
                agent.stop()
    finally:
        errors = net.cleanup()
        if errors:
            print("cleanup errors:", errors)


if __name__ == "__main__":
    main()
