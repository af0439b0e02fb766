"""The agent's own bpffs: checked by filesystem magic, mounted where none is, never skipped.

A fresh machine has no bpffs at /sys/fs/bpf, and ``ip netns exec`` hides the host's
one by remounting /sys. These tests make such places without touching the host's
mount: every unmount happens in a private mount namespace (``unshare --mount``),
which dies with the test's process.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwd.kernel import bpffs
from tests.e2e.agentproc import ROOT
from tests.netns import Netns, netns  # noqa: F401 - fixture

pytestmark = pytest.mark.root

# Runs first in every private mount namespace below: no bpffs at /sys/fs/bpf (bounded:
# a mount point holds at most a few stacked mounts).
FRESH = "for _ in 1 2 3 4; do mountpoint -q /sys/fs/bpf && umount /sys/fs/bpf; done; "


def fresh_shell(script: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash in a private mount namespace whose /sys/fs/bpf is not a bpffs."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", FRESH + script],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def agent_argv(tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fwd", "agent", "--socket", str(tmp / "fwd.sock"),
            "--state-dir", str(tmp / "state"), "--metrics", "", *extra]


def log_events(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_fresh_namespace_gets_one_bpffs() -> None:
    """No bpffs: ensure mounts exactly one at /sys/fs/bpf; a second call mounts nothing."""
    code = (
        "import json; from fwd.kernel import bpffs; "
        "assert not bpffs.is_bpffs('/sys/fs/bpf'); "
        "first = bpffs.ensure('/sys/fs/bpf/fwdt-x/y'); second = bpffs.ensure('/sys/fs/bpf/fwdt-x/z'); "
        "mounts = [l for l in open('/proc/self/mountinfo') if l.split()[4] == '/sys/fs/bpf']; "
        "print(json.dumps({'first': first, 'second': second, 'mounts': len(mounts), "
        "'bpffs': bpffs.is_bpffs('/sys/fs/bpf/fwdt-x/z')}))"
    )
    proc = fresh_shell(f"{sys.executable} -c \"{code}\"")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"first": True, "second": False, "mounts": 1, "bpffs": True}


def test_tmpfs_is_not_a_bpffs(tmp_path: Path) -> None:
    """A pin directory on tmpfs is refused by name, not with the kernel's EPERM."""
    target = Path("/dev/shm") / f"fwdt-{os.getpid()}" / "pins"
    with pytest.raises(bpffs.BpffsError) as err:
        bpffs.ensure(target)
    msg = str(err.value)
    assert "is not on a bpffs" in msg and "tmpfs" in msg and "mount -t bpf bpf /dev/shm" in msg
    assert not target.parent.exists()


def test_agent_refuses_tmpfs(netns: Netns, tmp_path: Path) -> None:
    ns = netns.make_netns()
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}",
         *agent_argv(tmp_path, "--bpffs", f"/dev/shm/fwdt-{os.getpid()}")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 1
    failed = [e for e in log_events(proc.stderr) if e["event"] == "agent_failed"]
    assert len(failed) == 1 and "is not on a bpffs" in str(failed[0]["error"]), proc.stderr


def test_agent_that_cannot_mount_says_what_to_mount(netns: Netns, tmp_path: Path) -> None:
    """Without CAP_SYS_ADMIN it cannot mount: one error line says what to mount where;
    with --no-pin, the operator's explicit choice, it runs unpinned."""
    ns = netns.make_netns()
    nocap = f"nsenter --net=/run/netns/{ns} setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin"
    argv = shlex.join(agent_argv(tmp_path))
    proc = fresh_shell(f"{nocap} {argv}")
    assert proc.returncode == 1, proc.stderr
    errors = [e for e in log_events(proc.stderr) if e["level"] == "error"]
    assert len(errors) == 1, proc.stderr
    assert "mount -t bpf bpf /sys/fs/bpf" in str(errors[0]["error"])
    assert "--no-pin" in str(errors[0]["error"])

    sock = tmp_path / "fwd.sock"
    proc = fresh_shell(
        f"{nocap} {argv} --no-pin & pid=$!; "
        f"for _ in $(seq 200); do [ -S {sock} ] && break; sleep 0.05; done; "
        "kill -TERM $pid; wait $pid; echo exit=$?; ls /sys/fs/bpf | wc -l"
    )
    events = log_events(proc.stderr)
    assert proc.stdout.split() == ["exit=0", "0"], proc.stderr  # stopped cleanly, no mount
    assert [e["event"] for e in events if e["level"] in ("warning", "error")] == [
        "pinning_disabled"
    ], proc.stderr
    assert any(e["event"] == "agent_ready" for e in events), proc.stderr


@pytest.fixture
def lab(netns: Netns) -> Iterator[tuple[str, str]]:
    """Namespace B (the agent's) with veth-a to A; returns (b, a)."""
    a, b = netns.make_netns(), netns.make_netns()
    netns.veth_pair(b, "veth-a", a, "eth0")
    yield b, a


def test_agent_under_ip_netns_exec_pins(
    lab: tuple[str, str], netns: Netns, tmp_path: Path
) -> None:
    """``ip netns exec`` remounts /sys: the agent still finds or mounts a bpffs and pins
    its program, maps and links there (seen through /proc/PID/root: its mount namespace)."""
    b, _ = lab
    pins = f"/sys/fs/bpf/{netns.prefix}-netnsexec-{os.getpid()}"
    log_path = tmp_path / "agent.log"
    ifindex = netns.ifindex(b, "veth-a")
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(
            ["ip", "netns", "exec", b, *agent_argv(tmp_path, "--bpffs", pins)],
            stdout=log, stderr=log, cwd=ROOT,
        )
    try:
        root = Path(f"/proc/{agent.pid}/root")
        link_pin = root / pins.lstrip("/") / "links" / str(ifindex)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and agent.poll() is None:
            if "agent_ready" in log_path.read_text() and link_pin.exists():
                break
            time.sleep(0.05)
        text = log_path.read_text()
        assert agent.poll() is None, text
        assert link_pin.exists(), text
        for rel in ("prog", "maps/fwd_rules", "maps/fwd_counters"):
            assert (root / pins.lstrip("/") / rel).exists(), rel
        assert bpffs.is_bpffs(root / pins.lstrip("/")), "pins not on a bpffs"
        events = log_events(text)
        assert [e for e in events if e["level"] == "error"] == [], text
        assert any(e["event"] == "maps_pinned" for e in events), text
        # It mounted its own: ip netns exec's fresh /sys has none, whatever the host has.
        mounted = [e for e in events if e["event"] == "bpffs_mounted"]
        assert mounted and mounted[0]["private_mount_namespace"] in (True, None), text
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
    assert agent.returncode == 0, log_path.read_text()
