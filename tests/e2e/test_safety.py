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
    # With the failsafe on (the default) tcp/22 cannot be dropped, so nothing is refused
    # for it: this is the check that guards the management traffic without one.
    agent = AgentProcess(ns, tmp_path, netns.pin_dir(), "--mgmt-prefix", "198.18.1.0/24",
                         "--mgmt-service", "tcp/22", "--failsafe", "")
    agent.start()
    try:
        closed = tmp_path / "closed.yaml"
        closed.write_text("default_action: drop\nrules:\n  - {id: web, action: allow, "
                          "protocol: tcp, dst_ports: [443]}\n")
        refused = fwd(agent, "policy", "apply", str(closed))
        assert refused.returncode == 1
        assert "FAILED_PRECONDITION" in refused.stderr and "default_action" in refused.stderr
        assert "apply with --force" in refused.stderr
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


def test_commit_confirm_rolls_back_unless_confirmed_also_across_a_restart(
    netns: Netns, tmp_path: Path
) -> None:
    import time

    ns = netns.make_netns()
    agent = AgentProcess(ns, tmp_path, netns.pin_dir())
    agent.start()
    try:
        first = tmp_path / "first.yaml"
        first.write_text("rules:\n  - {id: keep, action: drop, protocol: udp}\n")
        risky = tmp_path / "risky.yaml"
        risky.write_text("rules:\n  - {id: risky, action: drop, protocol: tcp}\n")
        assert fwd(agent, "policy", "apply", str(first)).returncode == 0  # revision 1
        # Unconfirmed: rolled back to revision 1's policy as revision 3.
        out = fwd(agent, "policy", "apply", str(risky), "--confirm-within", "2s")
        assert out.returncode == 0 and "rolls back" in out.stdout, out
        deadline = time.monotonic() + 10
        while "revision: 3" not in (got := fwd(agent, "policy", "get")).stdout:
            assert time.monotonic() < deadline, got.stdout
            time.sleep(0.2)
        assert "id: keep" in got.stdout and "risky" not in got.stdout
        # Confirmed in time: stays.
        assert fwd(agent, "policy", "apply", str(risky), "--confirm-within", "3s").returncode == 0
        confirmed = fwd(agent, "policy", "confirm", "4")
        assert confirmed.returncode == 0 and "confirmed revision 4" in confirmed.stdout
        time.sleep(3.5)
        assert "revision: 4" in fwd(agent, "policy", "get").stdout
        nothing = fwd(agent, "policy", "confirm")
        assert nothing.returncode == 1 and "FAILED_PRECONDITION" in nothing.stderr
        # Pending across a restart: the agent is down when the deadline passes.
        assert fwd(agent, "policy", "apply", str(first), "--confirm-within", "2s").returncode == 0
        assert agent.stop() == 0
        time.sleep(2.5)
        agent.start()
        deadline = time.monotonic() + 10
        while "revision: 6" not in (got := fwd(agent, "policy", "get")).stdout:
            assert time.monotonic() < deadline, got.stdout
            time.sleep(0.2)
        assert "id: risky" in got.stdout  # revision 4's policy again
        history = fwd(agent, "policy", "history", "-o", "json")
        assert [r["revision"] for r in __import__("json").loads(history.stdout)] == [6, 5, 4, 3, 2, 1]
        # Explicit rollback to any stored revision.
        back = fwd(agent, "policy", "rollback", "1")
        assert back.returncode == 0 and "applied revision 7" in back.stdout
        missing = fwd(agent, "policy", "rollback", "99")
        assert missing.returncode == 1 and "revision" in missing.stderr
    finally:
        assert agent.stop() == 0
