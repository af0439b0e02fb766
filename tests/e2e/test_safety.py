"""Never lock the operators out: a policy that could drop management traffic needs --force."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.agentproc import ROOT, AgentProcess
from tests.netns import Netns, netns  # noqa: F401 - fixture

pytestmark = pytest.mark.root


def fwd(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fwd", *args, "--socket", agent.socket],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_lockout_refused_unless_forced(netns: Netns, tmp_path: Path) -> None:
    ns = netns.make_netns()
    agent = AgentProcess(ns, tmp_path, netns.pin_dir(), "--mgmt-prefix", "198.18.1.0/24",
                         "--mgmt-service", "tcp/22")
    agent.start()
    try:
        closed = tmp_path / "closed.yaml"
        closed.write_text("default_action: drop\nrules:\n  - {id: web, action: allow, "
                          "protocol: tcp, dst_ports: [443]}\n")
        refused = fwd(agent, "policy", "apply", str(closed))
        assert refused.returncode == 1
        assert "FAILED_PRECONDITION" in refused.stderr and "default_action" in refused.stderr
        assert "revision: 0" in fwd(agent, "policy", "get").stdout
        # An allow rule for the management service first makes the same policy acceptable.
        safe = tmp_path / "safe.yaml"
        safe.write_text("default_action: drop\nrules:\n  - {id: ssh, action: allow, "
                        "protocol: tcp, src: [198.18.0.0/16], dst_ports: [22]}\n"
                        "  - {id: web, action: allow, protocol: tcp, dst_ports: [443]}\n")
        assert fwd(agent, "policy", "apply", str(safe)).returncode == 0
        forced = fwd(agent, "policy", "apply", "--force", str(closed))
        assert forced.returncode == 0, forced.stderr
        assert "applied revision 2" in forced.stdout
    finally:
        assert agent.stop() == 0
