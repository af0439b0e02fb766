"""The agent as a systemd Type=notify service: READY=1 once live, watchdog pings, clean stop."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from tests.e2e.agentproc import AgentProcess
from tests.netns import Netns, netns  # noqa: F401 - fixture

pytestmark = pytest.mark.root


def test_notify_ready_watchdog_and_stopping(netns: Netns, tmp_path: Path) -> None:
    ns = netns.make_netns()
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        systemd.settimeout(10)
        agent = AgentProcess(
            ns, tmp_path, netns.pin_dir(),
            env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},
        )
        agent.start()
        try:
            first = systemd.recv(4096).decode()
            assert first.startswith("READY=1"), first
            assert os.path.exists(agent.socket)  # ready means the API is reachable
            assert "STATUS=enforcing revision 0" in first
            pings = [systemd.recv(4096) for _ in range(3)]
            assert pings == [b"WATCHDOG=1"] * 3
            assert agent.stop(signal.SIGTERM) == 0
            rest = []
            systemd.settimeout(0.5)
            try:
                while True:
                    rest.append(systemd.recv(4096))
            except TimeoutError:
                pass
            assert b"STOPPING=1" in rest
        finally:
            agent.stop(signal.SIGKILL)


def test_cleanup_removes_what_fwd_owns_and_nothing_else(netns: Netns, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.e2e.agentproc import ROOT, xdp_prog_id

    ns = netns.make_netns()
    netns.veth_pair(ns, "mine0", ns, "mine1")
    netns.veth_pair(ns, "other0", ns, "other1")
    pins = netns.pin_dir()
    agent = AgentProcess(ns, tmp_path, pins, "--exclude", "other*")
    agent.start()
    assert agent.stop() == 0
    assert xdp_prog_id(ns, "mine0") and xdp_prog_id(ns, "mine1")  # kept after a clean stop
    # Maps and program are pinned too (a restart adopts them).
    pinned_maps = sorted(p.name for p in (pins / "maps").iterdir())
    assert {"fwd_rules", "fwd_counters", "fwd_live"} <= set(pinned_maps), pinned_maps
    assert (pins / "prog").exists()
    # Someone else's XDP program on another link must survive the cleanup.
    subprocess.run(["ip", "-n", ns, "link", "set", "dev", "other0", "xdpgeneric", "obj",
                    str(ROOT / "bpf/build/fwd.bpf.o"), "sec", "xdp"], check=True)
    other = xdp_prog_id(ns, "other0")
    assert other
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "fwd", "agent", "--cleanup",
         "--bpffs", str(pins)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("removed link") == 2
    for name in pinned_maps:
        assert f"removed pin maps/{name}" in out.stdout, out.stdout
    assert "removed pin prog" in out.stdout, out.stdout
    assert xdp_prog_id(ns, "mine0") == 0 and xdp_prog_id(ns, "mine1") == 0
    assert xdp_prog_id(ns, "other0") == other
    assert not pins.exists()
    assert (tmp_path / "state" / "fwd.db").exists()  # desired state is not fwd's to delete
