"""CLI reads and applies at 100,000 rules, end to end (prints numbers; not a test).

Run as root from the repository root: ``.venv/bin/python bench/reads.py [N]``.
Starts ``fwd agent`` in a throwaway network namespace, applies N (default
100,000) uniform rules with ``fwd policy apply`` (default options: it must end in
exit 0), then times each read command as an operator runs it (a new ``fwd``
process each time: interpreter start, connect, every page, formatting).

The baseline, in the same run against the same agent: the counters fetched the
way the CLI did before issue 16 (betterproto2 decoding of 1,000-row pages,
``Client.list_rule_stats``), beside ``fwd stats -o json`` (hand-decoded 50,000-row
pages). The old server side (every page reading every counter) is gone, so the
baseline measures only the client half of the old cost.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fwd.api.client import Client  # noqa: E402
from tests.e2e.agentproc import AgentProcess  # noqa: E402
from tests.netns import Netns  # noqa: E402


def machine() -> str:
    cpus = os.cpu_count()
    load = os.getloadavg()[0]
    return f"{platform.node()} ({cpus} CPUs, kernel {platform.release()}, load {load:.1f})"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    rules = [{"id": f"r{i}", "action": "drop", "protocol": "udp",
              "src": [str(ipaddress.IPv4Address(base + i % 131072))],
              "dst_ports": [1000 + i % 5000]} for i in range(n)]
    net = Netns(prefix="fwdbr")
    with tempfile.TemporaryDirectory() as work:
        policy = Path(work) / "big.json"
        policy.write_text(json.dumps({"rules": rules}))
        agent = AgentProcess(net.make_netns(), Path(work), net.pin_dir(),
                             "--metrics", "", "--log-level", "info")
        try:
            agent.start()

            def fwd(*args: str) -> float:
                t0 = time.monotonic()
                proc = subprocess.run([sys.executable, "-m", "fwd", *args, "--socket",
                                       agent.socket], capture_output=True, text=True, cwd=ROOT)
                took = time.monotonic() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"fwd {' '.join(args)}: exit {proc.returncode}: "
                                     f"{proc.stderr.strip()}")
                return took

            print(f"# {n:,} rules on {machine()}")
            print(f"fwd policy apply (default options)  {fwd('policy', 'apply', str(policy)):7.2f} s"
                  "  exit 0")
            for args in (("stats",), ("stats", "-o", "json"), ("rules", "list", "-o", "json"),
                         ("policy", "get", "-o", "json")):
                print(f"fwd {' '.join(args):32s} {fwd(*args):7.2f} s")

            async def old_way() -> float:
                async with Client(agent.socket, timeout=120) as client:
                    t0 = time.monotonic()
                    rows = await client.list_rule_stats(page_size=1000)
                    assert len(rows) >= n
                    return time.monotonic() - t0

            async def new_way() -> float:
                async with Client(agent.socket, timeout=120) as client:
                    t0 = time.monotonic()
                    rows = await client.rule_stats_rows()
                    assert len(rows) >= n
                    return time.monotonic() - t0

            old, new = anyio.run(old_way), anyio.run(new_way)
            print(f"counters in-process: betterproto2, 1,000 a page (baseline) {old:6.2f} s;"
                  f" hand-decoded, 50,000 a page {new:6.2f} s; ratio {old / new:5.1f}x")
        finally:
            agent.stop()
            errors = net.cleanup()
            if errors:
                print("cleanup:", errors)


if __name__ == "__main__":
    main()
