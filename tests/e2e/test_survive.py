"""The agent is SIGKILLed under a flood and restarted: enforcement never stops.

    A (198.18.1.2) ── eth0 ═ veth-a ── B: fwd agent, UDP receiver on 9998 / 9999

A floods UDP to B:9999, which the policy drops, with one datagram to the
allowed port 9998 after every burst (proof that traffic flowed the whole
time). The agent is killed with SIGKILL mid-flood and restarted while the
flood goes on. Afterwards: not one 9999 datagram reached B's socket; the
restarted agent enforces the same revision over the same links (ids
unchanged, adopted, not re-attached) and the same maps (nothing re-applied);
the rule's drop counter went on counting while no agent ran and never reset.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from fwd.api.client import Client
from fwd.api.gen.fwd import v1 as pb
from fwd.core import abi
from fwd.kernel.maps import Map
from fwd.policy.model import policy_from_dict
from tests.e2e.agentproc import AgentProcess
from tests.netns import Netns, bpffs, netns, run, run_in  # noqa: F401 - fixture

pytestmark = pytest.mark.root

T = TypeVar("T")
FLOOD = str(Path(__file__).with_name("flood.py"))
DROP = {
    "rules": [
        {"id": "drop-flood", "action": "drop", "protocol": "udp",
         "src": ["198.18.1.0/24"], "dst_ports": [9999]},
    ]
}  # fmt: skip


def call(agent: AgentProcess, fn: Callable[[Client], Awaitable[T]]) -> T:
    async def go() -> T:
        async with Client(agent.socket, timeout=20) as client:
            return await fn(client)

    return anyio.run(go)


def drops(agent: AgentProcess) -> int:
    stats = call(agent, lambda c: c.list_rule_stats())
    return next(s.packets for s in stats if s.rule_id == "drop-flood")


def pinned_rule_packets(pins: Path) -> int:
    """Packets counted by every rule slot, read from the pinned map (no agent needed)."""
    with Map.from_pinned(pins / "maps" / "fwd_counters") as counters:
        total = 0
        stride = (counters.value_size + 7) // 8 * 8
        for key, raw in counters.lookup_batch():
            if int.from_bytes(key, sys.byteorder) >= abi.SLOT_FIRST_RULE:
                total += sum(
                    int.from_bytes(raw[c * stride : c * stride + 8], sys.byteorder)
                    for c in range(counters.ncpus)
                )
        return total


def pinned_link_id(pins: Path, ifindex: int) -> int:
    out = run(["bpftool", "-j", "link", "show", "pinned", str(pins / "links" / str(ifindex))])
    return int(json.loads(out.stdout)["id"])


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigkill_under_flood_lets_nothing_through(netns: Netns, tmp_path: Path) -> None:  # noqa: F811
    a, b = netns.make_netns(), netns.make_netns()
    netns.veth_pair(b, "veth-a", a, "eth0")
    netns.add_address(b, "veth-a", "198.18.1.1/24")
    netns.add_address(a, "eth0", "198.18.1.2/24")
    pins = bpffs() / f"{netns.prefix}-survive-{os.getpid()}"
    netns.pin_dirs.append(pins)
    pins.mkdir()
    agent = AgentProcess(b, tmp_path, pins)
    agent.start()
    stop = tmp_path / "stop"
    procs: list[subprocess.Popen[str]] = []
    try:
        revision = call(agent, lambda c: c.apply_policy(policy_from_dict(DROP)))
        before = {i.name: i for i in call(agent, lambda c: c.list_interfaces())}
        link_id, ifindex = before["veth-a"].link_id, before["veth-a"].ifindex
        assert link_id and pinned_link_id(pins, ifindex) == link_id
        run_in(a, ["ping", "-c", "1", "-W", "2", "198.18.1.1"])  # neighbours resolved first
        start_drops = drops(agent)

        recv = subprocess.Popen(
            ["ip", "netns", "exec", b, sys.executable, FLOOD, "recv", "--bind", "198.18.1.1",
             "--ports", "9998,9999", "--stop", str(stop), "--max-seconds", "90"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(recv)
        assert recv.stderr is not None and recv.stderr.readline().strip() == "ready"
        send = subprocess.Popen(
            ["ip", "netns", "exec", a, sys.executable, FLOOD, "send", "--to", "198.18.1.1",
             "--port", "9999", "--control", "9998", "--stop", str(stop),
             "--max-seconds", "60", "--max-count", "3000000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(send)

        wait_until("the flood to reach the rule", lambda: drops(agent) > start_drops + 1000)
        at_kill = drops(agent)
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        # No agent: the pinned program and maps go on dropping (and counting).
        dead = pinned_rule_packets(pins)
        wait_until("drops while no agent runs", lambda: pinned_rule_packets(pins) > dead + 1000)
        assert send.poll() is None, "the flood ended before the restart"

        agent.start()
        after_restart = drops(agent)
        assert after_restart >= dead + 1000 > at_kill  # continuous: no reset
        wait_until("drops after the restart", lambda: drops(agent) > after_restart + 1000)
        assert send.poll() is None, "the flood ended before the restarted agent ran under it"
        stop.touch()
        sent = json.loads(send.communicate(timeout=30)[0])
        got = json.loads(recv.communicate(timeout=30)[0])
        end_drops = drops(agent)

        assert got["9999"] == 0, f"{got['9999']} dropped datagrams got through"
        assert got["9998"] > 0 and sent["9999"] > 0
        # Every flood datagram that left A was dropped by the rule, before and
        # after the kill alike (A's veth counts any it could not even send).
        tx_dropped = int(run_in(a, ["cat", "/sys/class/net/eth0/statistics/tx_dropped"]).stdout)
        assert sent["9999"] - tx_dropped <= end_drops - start_drops <= sent["9999"]

        policy = call(agent, lambda c: c.get_policy())
        assert policy.revision == revision
        adoption = policy.adoption
        assert adoption is not None
        assert adoption.kernel_revision == revision and not adoption.reapplied, adoption
        assert {"fwd_rules", "fwd_counters", "fwd_live"} <= set(adoption.maps_reused)
        assert adoption.notes == []
        after = {i.name: i for i in call(agent, lambda c: c.list_interfaces())}
        assert after["veth-a"].link_id == link_id == pinned_link_id(pins, ifindex)
        assert after["veth-a"].adopted and after["veth-a"].state == pb.InterfaceState.ATTACHED
        restart_log = agent.log().rsplit("agent_starting", 1)[1]
        assert "xdp_adopted" in restart_log and "xdp_attached" not in restart_log
        print(f"\nflood: {sent['9999']} dropped datagrams sent, {got['9998']} control received, "
              f"0 of the flood received; rule counted {end_drops - start_drops}")  # fmt: skip
    finally:
        stop.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        code = agent.stop()
        assert code in (0, -signal.SIGKILL), agent.log()[-3000:]
