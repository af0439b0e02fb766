"""AgentLock: one holder per state dir and pin dir; the second learns the first's PID."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fwd.core.agentlock import AgentLock, AlreadyRunning


def test_state_dir_lock_names_the_holder_and_is_released_on_close(tmp_path: Path) -> None:
    first = AgentLock()
    first.state_dir(tmp_path / "state")
    assert (tmp_path / "state" / "agent.lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(AlreadyRunning) as caught, AgentLock() as second:
        second.state_dir(tmp_path / "state")
    assert caught.value.pid == os.getpid()
    assert f"pid {os.getpid()}" in str(caught.value) and "state dir" in str(caught.value)
    first.close()
    with AgentLock() as third:  # released: the next agent takes it
        third.state_dir(tmp_path / "state")


def test_pin_dir_lock_is_a_directory_lock(tmp_path: Path) -> None:
    with AgentLock() as first:
        assert first.pin_dir(tmp_path / "pins")
        assert first.pin_dir(tmp_path / "pins")  # taking it again is a no-op
        assert [p.name for p in (tmp_path / "pins").iterdir()] == []  # no file in bpffs
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}.*bpffs"):
            AgentLock().pin_dir(tmp_path / "pins")


def test_pin_dir_that_cannot_exist_yet_is_not_locked(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert not AgentLock().pin_dir(tmp_path / "file" / "pins")
