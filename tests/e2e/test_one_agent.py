"""One agent per state: a second agent on the same state dir or pin dir changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.agentproc import ROOT, AgentProcess, xdp_prog_id
from tests.netns import Netns, netns, run  # noqa: F401 - fixture

pytestmark = pytest.mark.root


def _link_ids(pins: Path) -> dict[str, int]:
    """Pinned link name -> bpf_link id (the kernel's, via bpftool)."""
    ids = {}
    for pin in sorted((pins / "links").iterdir()):
        out = run(["bpftool", "-j", "link", "show", "pinned", str(pin)]).stdout
        ids[pin.name] = int(json.loads(out)["id"])
    return ids


def _second(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "fwd", "agent", *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_second_agent_exits_with_one_line_and_changes_nothing(
    netns: Netns, tmp_path: Path
) -> None:
    ns = netns.make_netns()
    netns.veth_pair(ns, "one0", ns, "one1")
    pins = netns.pin_dir()
    first = AgentProcess(ns, tmp_path, pins)
    first.start()
    try:
        assert first.proc is not None
        before = {dev: xdp_prog_id(ns, dev) for dev in ("one0", "one1")}
        links = _link_ids(pins)
        assert all(before.values()), before
        assert len(links) == 2 and all(v > 0 for v in links.values()), links

        # The same everything, as in the report: the same socket, state dir and pins.
        same = _second(ns, "--socket", first.socket, "--state-dir", str(first.state_dir),
                       "--bpffs", str(pins))
        # Another state dir, the same pins: the links are still the first agent's.
        other_state = _second(ns, "--socket", str(tmp_path / "b.sock"),
                              "--state-dir", str(tmp_path / "b-state"), "--bpffs", str(pins))
        # The same state dir, other pins: the history is still the first agent's.
        other_pins = tmp_path / "not-bpffs-pins"
        other_pins_run = _second(ns, "--socket", str(tmp_path / "c.sock"),
                                 "--state-dir", str(first.state_dir), "--bpffs", str(other_pins))
        # And cleanup would detach the running agent's links.
        cleanup = _second(ns, "--cleanup", "--bpffs", str(pins))

        pid = first.proc.pid
        for proc, what in ((same, "state dir"), (other_state, "bpffs"),
                           (other_pins_run, "state dir"), (cleanup, "bpffs")):
            assert proc.returncode == 1, (proc.returncode, proc.stderr)
            lines = proc.stderr.splitlines()
            assert len(lines) == 1, proc.stderr
            assert f"pid {pid}" in lines[0] and what in lines[0], lines[0]
            assert proc.stdout == ""
        assert {dev: xdp_prog_id(ns, dev) for dev in ("one0", "one1")} == before
        assert _link_ids(pins) == links
        assert not os.path.exists(tmp_path / "b.sock") and not os.path.exists(tmp_path / "c.sock")
        assert "xdp_adopted" not in first.log().split("agent_ready", 1)[1]
        # The first agent still serves.
        out = subprocess.run(
            [sys.executable, "-m", "fwd", "interfaces", "-o", "json", "--socket", first.socket],
            capture_output=True, text=True, cwd=ROOT, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        served = {i["name"]: i["prog_id"] for i in json.loads(out.stdout)}
        assert served["one0"] == before["one0"]
    finally:
        assert first.stop() == 0, first.log()[-3000:]

    # Once the first agent is gone (even a SIGKILL releases an flock), a new one starts.
    again = AgentProcess(ns, tmp_path, pins)
    again.start()
    assert again.stop() == 0
