"""The operator's contract (issue 16), end to end: the agent in namespace B, a peer in A.

    A (198.18.9.2) ── eth0 ──── veth-a ── B: fwd agent (198.18.9.1)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.agentproc import ROOT, AgentProcess, stop_lab
from tests.netns import Netns

pytestmark = pytest.mark.root


@dataclass
class Lab:
    net: Netns
    a: str
    b: str
    agent: AgentProcess

    def fwd(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fwd", *args, "--socket", self.agent.socket],
            capture_output=True, text=True, timeout=60, cwd=ROOT, input=stdin,
        )

    def revisions(self) -> list[int]:
        out = self.fwd("policy", "history", "-o", "json")
        assert out.returncode == 0, out.stderr
        return [r["revision"] for r in json.loads(out.stdout)]


def make_lab(tmp: Path, *agent_args: str) -> tuple[Netns, AgentProcess, str, str]:
    net = Netns(prefix="fwdc")
    a, b = net.make_netns(), net.make_netns()
    net.veth_pair(b, "veth-a", a, "eth0")
    net.add_address(b, "veth-a", "198.18.9.1/24")
    net.add_address(a, "eth0", "198.18.9.2/24")
    return net, AgentProcess(b, tmp, net.pin_dir(), *agent_args), a, b


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    net, agent, a, b = make_lab(tmp_path_factory.mktemp("contract"))
    try:
        agent.start()
        yield Lab(net, a, b, agent)
    finally:
        stop_lab(agent if agent.proc else None, net)


SET_POLICY = """\
sets:
  bl: {type: prefix, elements: [198.51.100.0/24]}
  web: {type: port, elements: [80, 443]}
rules:
  - {id: bl, action: drop, src_set: bl}
  - {id: web, action: allow, protocol: tcp, dst_port_set: web}
"""


def test_no_op_changes_say_so_and_make_no_revision(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "sets.yaml"
    path.write_text(SET_POLICY)
    first = lab.fwd("policy", "apply", str(path))
    assert first.returncode == 0, first.stderr
    history = lab.revisions()
    rev = history[0]
    # Re-applying the same policy: no revision, and the reply says so.
    again = lab.fwd("policy", "apply", str(path))
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"unchanged: revision {rev} already enforces this policy\n"
    # Elements already present / already absent (a prefix set and a port set).
    for args, said in [
        (("sets", "add", "bl", "198.51.100.0/24"), "0 added, 1 already present"),
        (("sets", "remove", "bl", "203.0.113.0/24"), "0 removed, 1 not present"),
        (("sets", "add", "web", "443"), "0 added, 1 already present"),
        (("sets", "remove", "web", "8080"), "0 removed, 1 not present"),
    ]:
        out = lab.fwd(*args)
        assert out.returncode == 0, out.stderr
        assert said in out.stdout and f"unchanged: revision {rev}" in out.stdout, out.stdout
    assert lab.revisions() == history
    # A real change still makes one, and says what it did.
    out = lab.fwd("sets", "add", "bl", "198.51.100.0/24", "203.0.113.0/24")
    assert out.returncode == 0, out.stderr
    assert "1 added, 1 already present; revision" in out.stdout
    assert lab.revisions()[0] == rev + 1
