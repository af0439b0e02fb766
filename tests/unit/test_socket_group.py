"""The API socket belongs to the fwd group when that group exists (issue 5: 0660, root:fwd)."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from fwd.api import transport


def test_socket_mode_and_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = grp.getgrgid(os.getegid() if os.geteuid() != 0 else 1)  # root may pick any group
    monkeypatch.setattr(transport, "SOCKET_GROUP", group.gr_name)
    sock = transport.listen_unix(tmp_path / "api.sock")
    try:
        st = (tmp_path / "api.sock").stat()
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == group.gr_gid
    finally:
        sock.close()


def test_no_such_group_leaves_the_group_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "SOCKET_GROUP", "fwd-no-such-group-x")
    sock = transport.listen_unix(tmp_path / "api.sock")
    try:
        assert (tmp_path / "api.sock").stat().st_gid == os.getegid()
    finally:
        sock.close()
