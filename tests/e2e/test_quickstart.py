"""The README's quick start stays true: contrib/demo.sh --once runs and checks itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_shows_the_drop() -> None:
    if not (ROOT / ".venv" / "bin" / "fwd").exists():
        pytest.fail("no .venv: run contrib/setup.sh (contrib/test.sh does)")
    env = {**os.environ, "FWD_DEMO_SKIP_SETUP": "1"}
    # As on a fresh machine: no bpffs at /sys/fs/bpf (unmounted in a private mount
    # namespace, never on the host); the agent mounts one and pins there.
    fresh = "for _ in 1 2 3 4; do mountpoint -q /sys/fs/bpf && umount /sys/fs/bpf; done; "
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c",
         fresh + f"exec bash {ROOT / 'contrib' / 'demo.sh'} --once"],
        capture_output=True, text=True, timeout=180, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "== pinned under /sys/fs/bpf/fwd-demo: links maps prog" in proc.stdout
    agent_errors = [line for line in proc.stderr.splitlines() if '"level": "error"' in line]
    assert agent_errors == [], agent_errors
    assert 'from A: {"9998": 10, "9999": 0}' in proc.stdout
    assert "drop-a-udp-9999  drop         10" in proc.stdout
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "fwd-demo" not in listed, "demo left namespaces behind"
    assert not Path("/sys/fs/bpf/fwd-demo").exists(), "demo left pins behind"
