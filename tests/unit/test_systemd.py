"""sd_notify without systemd: a datagram socket stands in for it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fwd import systemd


def test_notify_sends_one_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert systemd.notify("READY=1\nSTATUS=x", environ={"NOTIFY_SOCKET": path})
        assert server.recv(1024) == b"READY=1\nSTATUS=x"


def test_notify_abstract_socket() -> None:
    name = f"fwd-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert systemd.notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert server.recv(1024) == b"STOPPING=1"


def test_not_under_systemd_is_a_no_op() -> None:
    assert systemd.notify("READY=1", environ={}) is False


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    assert systemd.watchdog_interval(environ={}) is None
    assert systemd.watchdog_interval(environ={"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval(environ={"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": pid}) == 2.0
    assert systemd.watchdog_interval(environ={"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval(environ={"WATCHDOG_USEC": "0"}) is None
