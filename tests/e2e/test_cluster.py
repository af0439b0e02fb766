"""Cluster mode end to end: a real etcd, three agents, real traffic.

Topology (every namespace ours, every address in 198.18.0.0/15)::

    hub (etcd on 198.18.100.1, an address on its lo)
     |-- veth 198.18.11x.0/24 --> node i: ctl0   (excluded: XDP never touches the control path)
                                  node i: data0 <-- veth 198.18.12x.0/24 --> client i

The agents run with ``nsenter --net`` (tests/e2e/agentproc.py), so host loopback
is not reachable from them: they reach etcd over ctl0. n0 and n1 start with
role=edge, n2 with role=core. The CLI talks to the agents' unix sockets.
"""

from __future__ import annotations

import io
import json
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fwd.cli import main as fwd_main
from tests.e2e.agentproc import AgentProcess, udp_count
from tests.etcd import EtcdServer, need_etcd
from tests.netns import Netns, require_root, run

pytestmark = pytest.mark.root

ETCD_ADDR = "198.18.100.1"
LEASE_TTL = 2  # seconds (etcd's minimum): a killed node goes silent quickly
DROP_9999 = {"rules": [{"id": "no-9999", "action": "drop", "protocol": "udp", "dst_ports": [9999]}]}
DROP_9997 = {"rules": [{"id": "no-9997", "action": "drop", "protocol": "udp", "dst_ports": [9997]}]}


@dataclass
class Node:
    name: str
    ns: str
    client: str
    addr: str  # the agent's data address, where the UDP receiver listens
    agent: AgentProcess


@dataclass
class Cluster:
    net: Netns
    etcd: EtcdServer
    nodes: list[Node]
    workdir: Path

    def fwd(self, *argv: str, node: int = 0, check: bool = True) -> tuple[int, str, str]:
        """Run ``fwd ARGV --socket <node's socket>`` in-process; (code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        code = fwd_main([*argv, "--socket", self.nodes[node].agent.socket], out=out, err=err)
        if check:
            assert code == 0, f"fwd {' '.join(argv)}: {err.getvalue()}"
        return code, out.getvalue(), err.getvalue()

    def apply(self, name: str, policy: dict[str, Any], selector: str, node: int = 0) -> int:
        """``fwd policy apply`` through one node's API; the etcd revision of the write."""
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(policy))
        _, out, _ = self.fwd("policy", "apply", str(path), "--name", name,
                             "--selector", selector, node=node)  # fmt: skip
        m = re.search(r"at etcd revision (\d+)", out)
        assert m, out
        return int(m.group(1))

    def status(self, node: int = 0) -> dict[str, Any]:
        _, out, _ = self.fwd("cluster", "status", "-o", "json", node=node)
        data: dict[str, Any] = json.loads(out)
        return data

    def wait(self, revision: int, *extra: str, node: int = 0) -> str:
        _, out, _ = self.fwd("cluster", "wait", "--revision", str(revision), "--timeout", "60",
                             *extra, node=node)  # fmt: skip
        return out

    def udp(self, node: Node, ports: list[int], count: int = 10) -> dict[int, int]:
        """Datagrams that reached ``node`` from its client, per destination port."""
        return udp_count(self.net, node.ns, node.addr, ports,
                         [(node.client, node.addr, p, count) for p in ports])  # fmt: skip


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_root()
    need_etcd()
    net = Netns()
    etcd: EtcdServer | None = None
    nodes: list[Node] = []
    try:
        hub = net.make_netns()
        net.add_address(hub, "lo", f"{ETCD_ADDR}/32")
        etcd = EtcdServer(tmp_path / "etcd", host=ETCD_ADDR, netns=hub)
        etcd.start()
        for i, role in enumerate(["edge", "edge", "core"]):
            ns, client = net.make_netns(), net.make_netns()
            net.veth_pair(hub, f"hub{i}", ns, "ctl0")
            net.add_address(hub, f"hub{i}", f"198.18.{110 + i}.1/24")
            net.add_address(ns, "ctl0", f"198.18.{110 + i}.2/24")
            net.veth_pair(client, "cli0", ns, "data0")
            net.add_address(client, "cli0", f"198.18.{120 + i}.1/24")
            net.add_address(ns, "data0", f"198.18.{120 + i}.2/24")
            run(["ip", "-n", ns, "route", "add", f"{ETCD_ADDR}/32", "via", f"198.18.{110 + i}.1"])
            workdir = tmp_path / f"n{i}"
            workdir.mkdir()
            agent = AgentProcess(
                ns, workdir, net.pin_dir(), "--etcd", etcd.url, "--etcd-insecure", "--node", f"n{i}",
                "--label", f"role={role}", "--exclude", "ctl0", "--lease-ttl", str(LEASE_TTL),
                "--metrics", "",
            )  # fmt: skip
            nodes.append(Node(f"n{i}", ns, client, f"198.18.{120 + i}.2", agent))
            agent.start(timeout=30)
        yield Cluster(net, etcd, nodes, tmp_path)
    finally:
        for n in nodes:
            if n.agent.proc is not None:
                n.agent.stop()
        if etcd is not None:
            etcd.cleanup()
        errors = net.cleanup()
        assert not errors, f"netns cleanup: {errors}"


def live_nodes(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in status["nodes"] if n["live"]}


def poll(what: str, check: Any, cluster: Cluster, attempts: int = 150) -> Any:
    """Call ``check()`` until it returns something truthy (bounded: ~attempts x 0.1 s)."""
    import time

    for _ in range(attempts):
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {attempts} attempts\n{cluster.status()}")


def test_policy_by_label_relabel_etcd_outage_and_silent_node(cluster: Cluster) -> None:
    edge0, edge1, core = cluster.nodes

    # Every agent registered: labels seeded from --label, status under a live lease.
    status = poll("3 live nodes", lambda: len(live_nodes(cluster.status())) == 3 and cluster.status(), cluster)
    nodes = live_nodes(status)
    assert {n: v["labels"] for n, v in nodes.items()} == {
        "n0": {"role": "edge"}, "n1": {"role": "edge"}, "n2": {"role": "core"}}  # fmt: skip
    # Attach modes from the Links actor: the control interface excluded, XDP on data0.
    def modes() -> dict[str, str]:
        return {i["name"]: i["mode"] for i in live_nodes(cluster.status())["n0"]["interfaces"]}

    poll("n0 reports its interfaces", lambda: "data0" in modes(), cluster)
    assert modes()["ctl0"] == "excluded" and modes()["data0"] in ("native", "generic")

    # A policy for role=edge, written through n2's API (any agent takes writes).
    rev = cluster.apply("edge", DROP_9999, "role=edge", node=2)
    out = cluster.wait(rev)
    assert "3 live nodes synced revision" in out
    assert cluster.udp(edge0, [9998, 9999]) == {9998: 10, 9999: 0}
    assert cluster.udp(edge1, [9998, 9999]) == {9998: 10, 9999: 0}
    assert cluster.udp(core, [9998, 9999]) == {9998: 10, 9999: 10}
    # Each node says what it enforces: the same hash on both edges, another on core.
    nodes = live_nodes(cluster.status())
    assert nodes["n0"]["policy_hash"] == nodes["n1"]["policy_hash"] != nodes["n2"]["policy_hash"]
    assert nodes["n0"]["policies"] == [["edge", rev]] and nodes["n2"]["policies"] == []
    # GetPolicy on a node: the merged policy it enforces, at its synced revision.
    _, out, _ = cluster.fwd("policy", "get", "-o", "json", node=0)
    got = json.loads(out)
    assert got["revision"] >= rev and [r["id"] for r in got["policy"]["rules"]] == ["edge:no-9999"]

    # Local-only changes are refused in cluster mode, naming why.
    code, _, err = cluster.fwd("rules", "delete", "edge:no-9999", node=0, check=False)
    assert code == 1 and "FAILED_PRECONDITION" in err and "cluster mode" in err

    # A wait for a revision nobody has reached names every node behind.
    code, _, err = cluster.fwd("cluster", "wait", "--revision", str(rev + 1000), "--timeout", "1",
                               check=False)  # fmt: skip
    assert code == 1 and "DEADLINE_EXCEEDED" in err
    assert all(f"{n} (synced " in err for n in ("n0", "n1", "n2"))

    # Relabel the core node: it converges to the edge policy.
    _, out, _ = cluster.fwd("cluster", "label", "n2", "role=edge")
    rev = int(re.search(r"revision (\d+)", out).group(1))  # type: ignore[union-attr]
    out = cluster.wait(rev, "--selector", "role=edge")
    assert "3 live nodes" in out
    assert cluster.udp(core, [9998, 9999]) == {9998: 10, 9999: 0}

    # etcd goes away: nothing changes, every node keeps enforcing.
    cluster.etcd.stop()
    code, _, err = cluster.fwd("cluster", "status", check=False)
    assert code == 3 and "UNAVAILABLE" in err  # 3: the control plane cannot be reached
    assert cluster.udp(edge0, [9998, 9999]) == {9998: 10, 9999: 0}
    assert cluster.udp(core, [9998, 9999]) == {9998: 10, 9999: 0}
    _, out, _ = cluster.fwd("policy", "get", "-o", "json", node=1)
    assert [r["id"] for r in json.loads(out)["policy"]["rules"]] == ["edge:no-9999"]

    # etcd is back (same data): a change for every node reaches all of them.
    cluster.etcd.start()
    rev = poll("a write after etcd restarts",
               lambda: _try_apply(cluster, "all", DROP_9997, ""), cluster)  # fmt: skip
    # A node reconnects after its backoff (up to 5 s), longer than this test's
    # 2 s lease: it may show silent meanwhile, and a wait skips silent nodes.
    # So first see all three live and synced, then wait (it returns at once).
    def converged() -> bool:
        nodes = live_nodes(cluster.status())
        return len(nodes) == 3 and all(n["synced_revision"] >= rev for n in nodes.values())

    poll("all 3 nodes live and synced again", converged, cluster)
    out = cluster.wait(rev)
    assert "3 live nodes synced revision" in out
    for node in cluster.nodes:
        assert cluster.udp(node, [9997, 9998]) == {9997: 0, 9998: 10}
    _, out, _ = cluster.fwd("cluster", "policies")
    assert re.search(r"100\s+all\s+\(every node\)", out) and re.search(r"100\s+edge\s+role=edge", out)

    # SIGKILL n0: its lease expires and it shows silent; waits skip it.
    edge0.agent.stop(signal.SIGKILL)
    poll("n0 silent", lambda: "n0" not in live_nodes(cluster.status(node=1)), cluster)
    status = cluster.status(node=1)
    assert [n["node"] for n in status["nodes"] if not n["live"]] == ["n0"]
    _, table, _ = cluster.fwd("cluster", "status", node=1)
    assert re.search(r"^n0\s+silent\s+role=edge", table, re.M)
    assert re.search(r"^n1\s+live\s+role=edge\s+\d+", table, re.M)
    out = cluster.wait(rev, node=1)
    assert "2 live nodes" in out and "silent, not waited for: n0" in out
    # Enforcement on the dead agent's node continues: XDP stays pinned.
    assert cluster.udp(edge0, [9997, 9999, 9998]) == {9997: 0, 9999: 0, 9998: 10}

    # A clean stop (SIGTERM) exits 0 and revokes the lease: silent at once, no TTL wait.
    assert edge1.agent.stop() == 0
    status = cluster.status(node=2)
    assert [n["node"] for n in status["nodes"] if not n["live"]] == ["n0", "n1"]


def _try_apply(cluster: Cluster, name: str, policy: dict[str, Any], selector: str) -> int | None:
    """Apply through node 0 if etcd answers yet; None while it is UNAVAILABLE."""
    path = cluster.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(policy))
    code, out, err = cluster.fwd("policy", "apply", str(path), "--name", name,
                                 "--selector", selector, check=False)  # fmt: skip
    if code != 0:
        # 3: etcd could not be reached; 4: the write may or may not have reached it.
        assert code in (3, 4) and "UNAVAILABLE" in err, (code, err)
        return None
    m = re.search(r"at etcd revision (\d+)", out)
    assert m, out
    return int(m.group(1))
