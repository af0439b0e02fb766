"""Cluster mode you can trust, end to end: etcd with TLS only, ``--client-cert-auth``
and auth enabled by ``fwd cluster init``; three agents, each with its own node
certificate (CN = node name), real XDP, real traffic.

Topology as in test_cluster.py: etcd on 198.18.100.1 in the hub namespace, each
node reaching it over its ctl0 veth (excluded from XDP). The operator's commands
(``fwd cluster init`` as root, policy and label writes as fwd-admin) run inside
the hub namespace straight to etcd; n2 also holds an admin identity, so its
API serves ``fwd cluster status/wait``; n0 and n1 have only their node identity.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fwd.cli import main as fwd_main
from tests.e2e.agentproc import ROOT, AgentProcess, udp_count
from tests.etcd import EtcdServer, make_etcd_certs, need_etcd
from tests.netns import Netns, require_root, run

pytestmark = pytest.mark.root

ETCD_ADDR = "198.18.100.1"
DROP_9999 = {"rules": [{"id": "no-9999", "action": "drop", "protocol": "udp", "dst_ports": [9999]}]}
DROP_9997 = {"rules": [{"id": "no-9997", "action": "drop", "protocol": "udp", "dst_ports": [9997]}]}


@dataclass
class Node:
    name: str
    ns: str
    client: str
    addr: str
    agent: AgentProcess


@dataclass
class Lab:
    net: Netns
    hub: str
    etcd: EtcdServer
    pki: Path
    nodes: list[Node]
    workdir: Path

    def tls(self, who: str) -> list[str]:
        return ["--etcd", self.etcd.url, "--etcd-ca", str(self.pki / "ca.pem"),
                "--etcd-cert", str(self.pki / f"{who}.pem"), "--etcd-key", str(self.pki / f"{who}.key")]  # fmt: skip

    def operator(self, *argv: str, who: str = "fwd-admin") -> subprocess.CompletedProcess[str]:
        """``fwd ARGV`` run where etcd is reachable (the hub), straight to etcd as ``who``."""
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.hub}", sys.executable, "-m", "fwd", *argv, *self.tls(who)],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        )  # fmt: skip

    def apply(self, name: str, policy: dict[str, Any], selector: str) -> int:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(policy))
        done = self.operator("policy", "apply", str(path), "--name", name, "--selector", selector)
        assert done.returncode == 0, done.stderr
        m = re.search(r"at etcd revision (\d+)", done.stdout)
        assert m, done.stdout
        return int(m.group(1))

    def fwd(self, *argv: str, node: int) -> tuple[int, str, str]:
        """``fwd ARGV`` through one agent's unix socket."""
        out, err = io.StringIO(), io.StringIO()
        code = fwd_main([*argv, "--socket", self.nodes[node].agent.socket], out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def wait(self, revision: int) -> str:
        code, out, err = self.fwd("cluster", "wait", "--revision", str(revision), "--timeout", "60", node=2)
        assert code == 0, err
        return out

    def udp(self, node: Node, ports: list[int]) -> dict[int, int]:
        return udp_count(self.net, node.ns, node.addr, ports, [(node.client, node.addr, p, 10) for p in ports])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_root()
    need_etcd()
    net = Netns()
    etcd: EtcdServer | None = None
    nodes: list[Node] = []
    try:
        pki = make_etcd_certs(tmp_path / "pki", "--server", ETCD_ADDR,
                              "--node", "n0", "--node", "n1", "--node", "n2")  # fmt: skip
        hub = net.make_netns()
        net.add_address(hub, "lo", f"{ETCD_ADDR}/32")
        etcd = EtcdServer(tmp_path / "etcd", host=ETCD_ADDR, netns=hub, pki=pki)
        etcd.start()
        lab = Lab(net, hub, etcd, pki, nodes, tmp_path)
        init = lab.operator("cluster", "init", "--node", "n0", "--node", "n1", "--node", "n2", who="root")
        assert init.returncode == 0 and "auth enabled" in init.stdout, init.stderr
        for i, role in enumerate(["edge", "edge", "core"]):
            labelled = lab.operator("cluster", "label", f"n{i}", f"role={role}")
            assert labelled.returncode == 0, labelled.stderr
        for i in range(3):
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
            admin = ["--etcd-admin-cert", str(pki / "fwd-admin.pem"), "--etcd-admin-key",
                     str(pki / "fwd-admin.key")] if i == 2 else []  # fmt: skip
            agent = AgentProcess(
                ns, workdir, net.pin_dir(), *lab.tls(f"node-n{i}"), *admin, "--node", f"n{i}",
                "--label", "role=wants-to-choose", "--exclude", "ctl0", "--lease-ttl", "2", "--metrics", "",
            )  # fmt: skip
            nodes.append(Node(f"n{i}", ns, client, f"198.18.{120 + i}.2", agent))
            agent.start(timeout=30)
        yield lab
    finally:
        for n in nodes:
            if n.agent.proc is not None:
                n.agent.stop()
        if etcd is not None:
            etcd.cleanup()
        errors = net.cleanup()
        assert not errors, f"netns cleanup: {errors}"


def _poll(what: str, check: Any, attempts: int = 150) -> Any:
    for _ in range(attempts):
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {attempts} attempts")


def _live(lab: Lab) -> dict[str, dict[str, Any]]:
    code, out, err = lab.fwd("cluster", "status", "-o", "json", node=2)
    assert code == 0, err
    return {n["node"]: n for n in json.loads(out)["nodes"] if n["live"]}


def test_three_nodes_with_their_own_certificates(lab: Lab) -> None:
    e = lab.etcd
    edge0, edge1, core = lab.nodes
    _poll("3 live nodes", lambda: len(_live(lab)) == 3)
    # --label could not choose the labels: a node may not write them; the admin's stay.
    assert {n: v["labels"] for n, v in _live(lab).items()} == {
        "n0": {"role": "edge"}, "n1": {"role": "edge"}, "n2": {"role": "core"}}  # fmt: skip
    assert "labels_kept" in edge0.agent.log()
    # Each agent's etcd user holds its node role only: never the admin role.
    for i in range(3):
        got = e.etcdctl("user", "get", f"n{i}")
        assert got.returncode == 0 and got.stdout.split("Roles:")[1].split() == [f"fwd-node-n{i}"], got.stdout

    # A policy written with the admin's certificate reaches the nodes it selects.
    rev = lab.apply("edge", DROP_9999, "role=edge")
    assert "3 live nodes synced revision" in lab.wait(rev)
    assert lab.udp(edge0, [9998, 9999]) == {9998: 10, 9999: 0}
    assert lab.udp(edge1, [9998, 9999]) == {9998: 10, 9999: 0}
    assert lab.udp(core, [9998, 9999]) == {9998: 10, 9999: 10}

    # An agent without an admin identity cannot act for the admin through its API.
    code, _, err = lab.fwd("cluster", "label", "n0", "role=core", node=0)
    assert code == 1 and "PERMISSION_DENIED" in err and "--etcd-admin-cert" in err
    code, _, err = lab.fwd("cluster", "status", node=1)
    assert code == 1 and "PERMISSION_DENIED" in err

    # With a node's certificate, etcdctl can write none of the keys that decide policy.
    for argv in (("put", "/fwd/policies/evil", "{}"), ("put", "/fwd/labels/n0", '{"role":"core"}'),
                 ("put", "/fwd/labels/n1", "{}"), ("put", "/fwd/status/n1", "{}")):  # fmt: skip
        done = e.etcdctl(*argv, identity="node-n0")
        assert done.returncode != 0 and "permission denied" in done.stderr, (argv, done.stderr)
    # No client certificate, or one from another CA: no connection at all.
    assert e.etcdctl("get", "/fwd/policies/edge", identity=None).returncode != 0
    other = make_etcd_certs(lab.workdir / "other-ca", "--node", "n0")
    assert e.etcdctl("put", "/fwd/status/n0", "{}", identity="node-n0", pki=other).returncode != 0

    # Rotation: a renewed certificate in the same files is taken without a restart.
    pid = edge0.agent.proc.pid if edge0.agent.proc else 0
    make_etcd_certs(lab.pki, "--node", "n0")
    _poll("n0 reloads its certificate", lambda: "etcd_credentials_reloaded" in edge0.agent.log(), attempts=200)
    rev = lab.apply("all", DROP_9997, "")
    assert "3 live nodes synced revision" in lab.wait(rev)
    assert lab.udp(edge0, [9997, 9998, 9999]) == {9997: 0, 9998: 10, 9999: 0}
    assert edge0.agent.proc is not None and edge0.agent.proc.pid == pid and edge0.agent.proc.poll() is None
    for n in lab.nodes:
        assert n.agent.stop() == 0
