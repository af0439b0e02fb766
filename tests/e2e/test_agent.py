"""End to end: the agent process in namespace B, veth peers A and C, real traffic.

    A (198.18.1.2, 2001:2:0:1::2) ── veth-a ─┐
                                             B: fwd agent (198.18.1.1 / 198.18.2.1)
    C (198.18.2.2, 2001:2:0:2::2) ── veth-c ─┘
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from fwd.api import convert
from fwd.api.client import Client
from fwd.api.gen.fwd import v1 as pb
from fwd.policy.model import policy_from_dict
from tests.e2e.agentproc import AgentProcess, UDP, stop_lab, udp_count, xdp_prog_id
from tests.netns import Netns, run, run_in

pytestmark = pytest.mark.root

T = TypeVar("T")

DROP_A = {
    "rules": [
        {
            "id": "drop-a-udp-9999",
            "action": "drop",
            "protocol": "udp",
            "src": ["198.18.1.0/24", "2001:2:0:1::/64", "198.18.3.0/24"],
            "dst_ports": [9999],
        },
        {"id": "allow-ping", "action": "allow", "protocol": "icmp"},
    ]
}


@dataclass
class Lab:
    net: Netns
    a: str
    b: str
    c: str
    agent: AgentProcess

    def call(self, fn: Callable[[Client], Awaitable[T]]) -> T:
        async def go() -> T:
            async with Client(self.agent.socket, timeout=20) as client:
                return await fn(client)

        return anyio.run(go)

    def apply(self, raw: dict[str, Any], expect: int | None = None) -> int:
        policy = policy_from_dict(raw)
        return self.call(lambda c: c.apply_policy(policy, expect))

    def revision(self) -> int:
        return self.call(lambda c: c.get_policy()).revision

    def counters(self) -> dict[str, int]:
        return {s.rule_id: s.packets for s in self.call(lambda c: c.list_rule_stats())}

    def interfaces(self) -> dict[str, pb.Interface]:
        return {i.name: i for i in self.call(lambda c: c.list_interfaces())}


def wait_subscribed(lab: Lab, before: int, timeout: float = 15.0) -> None:
    """Until the agent logs one more events subscription than ``before``: traffic sent
    earlier is never seen by the subscriber (a fixed sleep was too short under load)."""
    deadline = time.monotonic() + timeout
    while lab.agent.log().count('"events_subscribed"') <= before:
        assert time.monotonic() < deadline, "the events subscription did not start"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    net = Netns(prefix="fwde2e")
    agent: AgentProcess | None = None
    try:
        a, b, c = net.make_netns(), net.make_netns(), net.make_netns()
        net.veth_pair(b, "veth-a", a, "eth0")
        net.veth_pair(b, "veth-c", c, "eth0")
        for ns, dev, v4, v6 in [
            (b, "veth-a", "198.18.1.1/24", "2001:2:0:1::1/64"),
            (a, "eth0", "198.18.1.2/24", "2001:2:0:1::2/64"),
            (b, "veth-c", "198.18.2.1/24", "2001:2:0:2::1/64"),
            (c, "eth0", "198.18.2.2/24", "2001:2:0:2::2/64"),
        ]:
            net.add_address(ns, dev, v4)
            net.add_address(ns, dev, v6)
        agent = AgentProcess(b, tmp_path_factory.mktemp("agent"), net.pin_dir())
        agent.start()
        yield Lab(net, a, b, c, agent)
    finally:
        stop_lab(agent, net)


def test_interfaces_attached_natively(lab: Lab) -> None:
    ifaces = lab.interfaces()
    for name in ("veth-a", "veth-c"):
        assert ifaces[name].state == pb.InterfaceState.ATTACHED, ifaces[name]
        assert ifaces[name].mode == pb.AttachMode.NATIVE
        assert ifaces[name].prog_id == xdp_prog_id(lab.b, name) != 0
    assert ifaces["lo"].state == pb.InterfaceState.EXCLUDED
    assert xdp_prog_id(lab.b, "lo") == 0


def test_policy_drops_exactly_what_it_says(lab: Lab) -> None:
    rev = lab.apply(DROP_A)
    assert lab.revision() == rev
    before = lab.counters()
    got4 = udp_count(
        lab.net, lab.b, "0.0.0.0", [9998, 9999],
        [(lab.a, "198.18.1.1", 9999, 20), (lab.a, "198.18.1.1", 9998, 20)],
    )
    assert got4 == {9998: 20, 9999: 0}
    got_c = udp_count(lab.net, lab.b, "0.0.0.0", [9999], [(lab.c, "198.18.2.1", 9999, 20)])
    assert got_c == {9999: 20}
    got6 = udp_count(
        lab.net, lab.b, "::", [9998, 9999],
        [(lab.a, "2001:2:0:1::1", 9999, 20), (lab.a, "2001:2:0:1::1", 9998, 20)],
    )
    assert got6 == {9998: 20, 9999: 0}
    for ns, dst in [(lab.a, "198.18.1.1"), (lab.a, "2001:2:0:1::1"), (lab.c, "198.18.2.1")]:
        ping = run_in(ns, ["ping", "-c", "3", "-i", "0.2", "-W", "2", dst], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    after = lab.counters()
    assert after["drop-a-udp-9999"] - before.get("drop-a-udp-9999", 0) == 40
    assert after["allow-ping"] - before.get("allow-ping", 0) >= 6  # requests + replies seen


def test_bad_input_names_the_field_and_keeps_the_policy(lab: Lab) -> None:
    rev = lab.apply(DROP_A)
    good = convert.policy_to_proto(policy_from_dict(DROP_A))

    def with_rule(**fields: Any) -> pb.Policy:
        rule = pb.Rule(id="bad", action=pb.Action.DROP, **fields)
        return pb.Policy(default_action=pb.Action.ALLOW, rules=[*good.rules, rule])

    cases = [
        (with_rule(src=["198.18.1.300/24"]), "rules[2].src[0]"),
        (with_rule(protocol="udp", dst_ports=["70000"]), "rules[2].dst_ports[0]"),
        (pb.Policy(rules=[pb.Rule(id="x", action=pb.Action.UNSPECIFIED)]), "rules[0].action"),
        (pb.Policy(rules=[*good.rules, good.rules[0]]), "rules[2].id"),
    ]

    async def attempt(client: Client, policy: pb.Policy, expect: int | None) -> GRPCError:
        stub = pb.PolicyServiceStub(client.channel, timeout=10)
        with pytest.raises(GRPCError) as info:
            await stub.apply_policy(pb.ApplyPolicyRequest(policy=policy, expect_revision=expect))
        return info.value

    for policy, field in cases:
        err = lab.call(functools.partial(attempt, policy=policy, expect=None))
        assert err.status == Status.INVALID_ARGUMENT, err
        assert field in (err.message or ""), err.message
    stale = lab.call(lambda c: attempt(c, good, rev - 1))
    assert stale.status == Status.FAILED_PRECONDITION
    assert str(rev) in (stale.message or "")
    # Nothing changed: same revision, same enforcement.
    assert lab.revision() == rev
    got = udp_count(lab.net, lab.b, "0.0.0.0", [9998, 9999],
                    [(lab.a, "198.18.1.1", 9999, 10), (lab.a, "198.18.1.1", 9998, 10)])
    assert got == {9998: 10, 9999: 0}


def test_new_link_is_attached_enforced_and_cleaned_up(lab: Lab) -> None:
    lab.apply(DROP_A)
    d = lab.net.make_netns()
    start = time.monotonic()
    lab.net.veth_pair(lab.b, "veth-d", d, "eth0")
    prog = 0
    while time.monotonic() - start < 1.0 and not prog:
        prog = xdp_prog_id(lab.b, "veth-d")
        time.sleep(0.01)
    assert prog, "veth-d not attached within 1 s"
    links = run(["bpftool", "-j", "link", "show"]).stdout
    assert f'"prog_id":{prog}' in links.replace(" ", "")
    ifindex = lab.net.ifindex(lab.b, "veth-d")
    pin = lab.agent.pin_dir / "links" / str(ifindex)
    assert pin.exists()
    lab.net.add_address(lab.b, "veth-d", "198.18.3.1/24")
    lab.net.add_address(d, "eth0", "198.18.3.2/24")
    got = udp_count(lab.net, lab.b, "0.0.0.0", [9998, 9999],
                    [(d, "198.18.3.1", 9999, 10), (d, "198.18.3.1", 9998, 10)])
    assert got == {9998: 10, 9999: 0}
    lab.net.del_link(lab.b, "veth-d")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and (pin.exists() or "veth-d" in lab.interfaces()):
        time.sleep(0.02)
    assert not pin.exists(), "pin left behind"
    assert "veth-d" not in lab.interfaces()


def test_atomic_flip_never_mixes_policies(lab: Lab) -> None:
    """1,000 applies alternating two policies under traffic: every packet gets a verdict
    one of them gives. Both drop by default and decide flows X and Y with rules that keep
    their ids (so their counters add up across the flips) but match different fields; a
    mixed or half-written state would send X or Y to the default slot (and drop X)."""
    v6 = {"id": "v6", "action": "allow", "src": ["::/0"]}
    p1 = {"default_action": "drop", "rules": [
        {"id": "x", "action": "allow", "protocol": "udp", "dst_ports": [9998]},
        {"id": "y", "action": "drop", "protocol": "udp", "dst_ports": [9999]},
        {"id": "ping", "action": "allow", "protocol": "icmp"}, v6]}
    p2 = {"default_action": "drop", "rules": [
        {"id": "y", "action": "drop", "src": ["198.18.1.0/24"], "protocol": "udp", "dst_ports": ["9999-10000"]},
        {"id": "x", "action": "allow", "src": ["198.18.1.2/32"]},
        {"id": "ping", "action": "allow", "protocol": "icmp"}, v6]}
    policies = [policy_from_dict(p1), policy_from_dict(p2)]
    lab.apply(p1)
    before = lab.counters()
    count = 9000  # ~30 s at 3 ms apart: longer than 1,000 applies take here (~18 s)
    recv = subprocess.Popen(
        ["ip", "netns", "exec", lab.b, sys.executable, UDP, "recv", "--bind", "0.0.0.0",
         "--ports", "9998,9999", "--seconds", "90", "--expect", str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    senders: list[subprocess.Popen[str]] = []
    try:
        assert recv.stderr is not None and recv.stderr.readline().strip() == "ready"
        for port in (9998, 9999):
            senders.append(subprocess.Popen(
                ["ip", "netns", "exec", lab.a, sys.executable, UDP, "send", "--to", "198.18.1.1",
                 "--port", str(port), "--count", str(count), "--interval", "0.003"],
                stdout=subprocess.DEVNULL, text=True))

        async def flip(client: Client) -> int:
            for i in range(1000):
                await client.apply_policy(policies[(i + 1) % 2])
            return i + 1

        flips = lab.call(flip)
        senders_done_during_flips = sum(s.poll() is not None for s in senders)
        for s in senders:
            assert s.wait(120) == 0
        out, _ = recv.communicate(timeout=120)
    finally:
        for p in [*senders, recv]:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert flips == 1000
    assert senders_done_during_flips == 0, "traffic ended before the flips did"
    got = {int(k): v for k, v in json.loads(out).items()}
    assert got == {9998: count, 9999: 0}
    after = lab.counters()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["x"] == count, delta
    assert delta["y"] == count, delta
    assert delta["(default)"] == 0, delta


def test_restart_restores_policy_and_adopts_links(lab: Lab) -> None:
    rev = lab.apply(DROP_A)
    links_before = {n: (i.link_id, i.ifindex) for n, i in lab.interfaces().items() if i.link_id}
    assert lab.agent.stop() == 0
    # Pinned links keep enforcing while no agent runs (the old program stays attached).
    assert xdp_prog_id(lab.b, "veth-a") != 0
    lab.agent.start()
    assert lab.revision() == rev
    assert lab.call(lambda c: c.get_policy()).policy == convert.policy_to_proto(
        policy_from_dict(DROP_A)
    )
    ifaces = lab.interfaces()
    for name, (link_id, _) in links_before.items():
        assert ifaces[name].link_id == link_id, "link re-created instead of adopted"
        assert ifaces[name].prog_id == xdp_prog_id(lab.b, name)
    assert "xdp_adopted" in lab.agent.log()
    got = udp_count(lab.net, lab.b, "0.0.0.0", [9998, 9999],
                    [(lab.a, "198.18.1.1", 9999, 10), (lab.a, "198.18.1.1", 9998, 10)])
    assert got == {9998: 10, 9999: 0}


def test_logged_drops_stream_to_subscribers(lab: Lab) -> None:
    logged = {"rules": [{**DROP_A["rules"][0], "log": True}, DROP_A["rules"][1]]}  # type: ignore[dict-item]
    lab.apply(logged)
    before = lab.agent.log().count('"events_subscribed"')
    argv = [sys.executable, "-m", "fwd", "events", "--socket", lab.agent.socket, "--count", "15",
            "--duration", "20", "--rule", "drop-a-udp-9999", "-o", "json"]
    sub = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parents[2])
    try:
        wait_subscribed(lab, before)
        udp_count(lab.net, lab.b, "0.0.0.0", [9998, 9999],
                  [(lab.a, "198.18.1.1", 9999, 15), (lab.a, "198.18.1.1", 9998, 5)])
        out, err = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 15, out
    for e in events:
        assert e["rule_id"] == "drop-a-udp-9999" and e["dropped"] is True
        assert (e["src"], e["dst"], e["dst_port"], e["protocol"]) == ("198.18.1.2", "198.18.1.1", 9999, 17)
        assert e["interface"] == "veth-a"


def cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "fwd", *args, "--socket", lab.agent.socket],
                          capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])
    return proc


def test_rules_and_sets_change_incrementally(lab: Lab, tmp_path: Path) -> None:
    policy = tmp_path / "sets.yaml"
    policy.write_text(
        "sets:\n  bl: {type: prefix, elements: [198.51.100.0/24]}\n"
        "rules:\n  - {id: bl, action: drop, src_set: bl}\n"
        "  - {id: keep, action: drop, protocol: udp, src: [198.18.1.0/24], dst_ports: [9997]}\n"
    )
    assert cli(lab, "policy", "apply", str(policy)).returncode == 0
    send = [(lab.a, "198.18.1.1", 9997, 5), (lab.a, "198.18.1.1", 9998, 5)]
    assert udp_count(lab.net, lab.b, "0.0.0.0", [9997, 9998], send) == {9997: 0, 9998: 5}
    keep_before = lab.counters()["keep"]
    # Insert a rule first: C's 9999 is dropped now; "keep" keeps its counter.
    added = cli(lab, "rules", "add", "{id: c-9999, action: drop, protocol: udp, "
                "src: [198.18.2.0/24], dst_ports: [9999]}", "--position", "0")
    assert added.returncode == 0, added.stderr
    assert udp_count(lab.net, lab.b, "0.0.0.0", [9999], [(lab.c, "198.18.2.1", 9999, 5)]) == {9999: 0}
    listed = json.loads(cli(lab, "rules", "list", "-o", "json").stdout)
    assert [r["id"] for r in listed] == ["c-9999", "bl", "keep"]
    assert lab.counters()["keep"] == keep_before
    # A's prefix joins the blocklist: everything from A is dropped, by rule "bl".
    assert cli(lab, "sets", "add", "bl", "198.18.1.0/24", "2001:2:0:1::/64").returncode == 0
    assert udp_count(lab.net, lab.b, "0.0.0.0", [9998], [(lab.a, "198.18.1.1", 9998, 5)]) == {9998: 0}
    assert cli(lab, "sets", "show", "bl").stdout.split() == [
        "198.18.1.0/24", "198.51.100.0/24", "2001:2:0:1::/64"]
    assert cli(lab, "sets", "remove", "bl", "198.18.1.0/24").returncode == 0
    assert udp_count(lab.net, lab.b, "0.0.0.0", [9998], [(lab.a, "198.18.1.1", 9998, 5)]) == {9998: 5}
    assert lab.counters()["keep"] == keep_before  # untouched by all of it
    # Delete, and errors name what was wrong.
    assert cli(lab, "rules", "delete", "c-9999").returncode == 0
    assert udp_count(lab.net, lab.b, "0.0.0.0", [9999], [(lab.c, "198.18.2.1", 9999, 5)]) == {9999: 5}
    gone = cli(lab, "rules", "delete", "c-9999")
    assert gone.returncode == 1 and "rule_id" in gone.stderr and "c-9999" in gone.stderr
    bad = cli(lab, "sets", "add", "bl", "198.18.1.300")
    assert bad.returncode == 1 and "198.18.1.300" in bad.stderr
    nosuch = cli(lab, "sets", "add", "nope", "198.18.1.0/24")
    assert nosuch.returncode == 1 and "nope" in nosuch.stderr


def test_dry_run_drops_nothing_and_counts_would_drops(lab: Lab, tmp_path: Path) -> None:
    policy = tmp_path / "dry.yaml"
    policy.write_text("rules:\n  - {id: would, action: drop, protocol: udp, "
                      "src: [198.18.1.0/24], dst_ports: [9999]}\n")
    diff = cli(lab, "policy", "diff", str(policy))
    assert diff.returncode == 0 and "+ would" in diff.stdout
    applied = cli(lab, "policy", "apply", "--dry-run", str(policy))
    assert applied.returncode == 0, applied.stderr
    assert "dry_run: true" in cli(lab, "policy", "get").stdout
    before = lab.agent.log().count('"events_subscribed"')
    argv = [sys.executable, "-m", "fwd", "events", "--socket", lab.agent.socket, "--count", "12",
            "--duration", "20", "-o", "json"]
    sub = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parents[2])
    try:
        wait_subscribed(lab, before)
        got = udp_count(lab.net, lab.b, "0.0.0.0", [9999], [(lab.a, "198.18.1.1", 9999, 12)])
        out, err = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert got == {9999: 12}  # nothing dropped
    stats = {s["rule_id"]: s for s in json.loads(cli(lab, "stats", "-o", "json").stdout)}
    assert stats["would"]["would_drop_packets"] == 12 and stats["would"]["packets"] == 12
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 12, err
    assert all(e["would_drop"] and not e["dropped"] and e["rule_id"] == "would" for e in events)
    assert "no changes" in cli(lab, "policy", "diff", str(policy)).stdout.replace(
        "~ dry_run: True -> False\n", "no changes\n")
