"""Link churn: kernel state is the truth.

Bursts of veths are created, flapped, renamed out of the managed set and deleted in
the agent's namespace while policies are applied. Afterwards the kernel's XDP
attachments (read with bpftool) must equal the desired set exactly — every managed
link has our program, no other link does — and no pin is left for a link that is gone.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from fwd.api.client import Client
from fwd.policy.model import policy_from_dict
from tests.e2e.agentproc import AgentProcess
from tests.netns import Netns, netns, run  # noqa: F401 - fixture

pytestmark = pytest.mark.root

PAIRS = int(os.environ.get("FWD_CHURN_PAIRS", "160"))  # 2 veths each: >= 300 in CI
# bench/churn.sh raises PAIRS; the kernel deletes a veth in ~25 ms, so allow for it.
SETTLE_S = 20.0 + PAIRS * 0.05


def kernel_xdp(ns: str) -> dict[str, int]:
    """devname -> program id of every XDP attachment in ``ns``, as bpftool reports it."""
    out = run(["ip", "netns", "exec", ns, "bpftool", "-j", "net", "show"]).stdout
    return {x["devname"]: int(x["id"]) for entry in json.loads(out) for x in entry["xdp"]}


def links(ns: str) -> dict[str, int]:
    out = json.loads(run(["ip", "-n", ns, "-j", "link", "show"]).stdout)
    return {link["ifname"]: int(link["ifindex"]) for link in out}


def settle(check: Callable[[], str], timeout: float = 20.0) -> str:
    """Poll until ``check`` returns "" (no difference left) or the timeout passes."""
    deadline = time.monotonic() + timeout
    diff = check()
    while diff and time.monotonic() < deadline:
        time.sleep(0.1)
        diff = check()
    return diff


def test_bursts_of_veths_end_in_exactly_the_desired_attachments(
    netns: Netns, tmp_path: Path
) -> None:
    b = netns.make_netns()
    agent = AgentProcess(b, tmp_path, netns.pin_dir(), "--exclude", "skip*")
    agent.start()
    stop = threading.Event()
    applied: list[int] = []

    def apply_loop() -> None:
        """Apply policies over and over while the links churn."""
        async def go() -> None:
            async with Client(agent.socket, timeout=30) as client:
                i = 0
                while not stop.is_set() and i < 500:
                    rules = [{"id": f"r{j}", "action": "drop", "protocol": "udp",
                              "dst_ports": [1000 + j + i % 7]} for j in range(20)]
                    applied.append(await client.apply_policy(policy_from_dict({"rules": rules})))
                    i += 1
        anyio.run(go)

    applier = threading.Thread(target=apply_loop)
    applier.start()
    try:
        half = PAIRS // 2
        # Burst 1: create every pair at once (down), half of them named to be excluded.
        netns.batch(b, [f"link add c{i} type veth peer name d{i}" for i in range(half)]
                    + [f"link add skip{i} type veth peer name skipd{i}" for i in range(half, PAIRS)])
        # Burst 2: flap everything twice.
        for _ in range(2):
            netns.batch(b, [f"link set {n} up" for i in range(half) for n in (f"c{i}", f"d{i}")])
            netns.batch(b, [f"link set {n} down" for i in range(half) for n in (f"c{i}", f"d{i}")])
        # Burst 3: delete a third of the managed pairs (a veth dies with its peer),
        # rename some excluded links into the managed set and some managed out of it.
        netns.batch(b, [f"link del c{i}" for i in range(0, half, 3)])
        netns.batch(b, [f"link set skipd{i} name m{i}" for i in range(half, half + 10)])
        netns.batch(b, [f"link set d{i} name skipx{i}" for i in range(1, 30, 3)])
        # Burst 4: create and delete again within one batch.
        netns.batch(b, [f"link add t{i} type veth peer name u{i}" for i in range(40)]
                    + [f"link del t{i}" for i in range(0, 40, 2)])
    finally:
        stop.set()
        applier.join(60)
    assert applied and applied == sorted(applied), "applies failed or went backwards"

    def difference() -> str:
        kernel = kernel_xdp(b)
        present = links(b)
        managed = {n for n in present if n != "lo" and not n.startswith("skip")}
        problems = []
        missing = managed - set(kernel)
        extra = set(kernel) - managed
        if missing:
            problems.append(f"managed but not attached: {sorted(missing)[:10]}")
        if extra:
            problems.append(f"attached but not managed: {sorted(extra)[:10]}")
        progs = set(kernel.values())
        if len(progs) > 1:
            problems.append(f"more than one program attached: {progs}")
        pins = {int(p.name) for p in (agent.pin_dir / "links").iterdir()}
        want_pins = {present[n] for n in managed}
        if pins != want_pins:
            problems.append(
                f"pins {sorted(pins - want_pins)[:10]} left over, {sorted(want_pins - pins)[:10]} missing")
        return "; ".join(problems)

    try:
        started = time.monotonic()
        assert settle(difference, SETTLE_S) == ""
        settled = time.monotonic() - started
        total = len(links(b)) - 1
        assert total >= 300 or PAIRS < 150, f"only {total} links churned"
        print(f"churn: {2 * PAIRS + 80} veths created, {total} links left, {len(kernel_xdp(b))} attached, {len(applied)} applies, "
              f"settled {settled:.2f} s after the last burst")

        async def listed() -> dict[str, str]:
            async with Client(agent.socket) as client:
                return {i.name: i.state.name for i in await client.list_interfaces()}

        states = anyio.run(listed)
        for name in links(b):
            if name == "lo" or name.startswith("skip"):
                assert states[name] == "EXCLUDED", (name, states[name])
            else:
                assert states[name] == "ATTACHED", (name, states[name])
        assert set(states) == set(links(b))
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]
