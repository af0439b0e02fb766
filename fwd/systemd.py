"""systemd service integration: sd_notify(3) readiness, stopping and watchdog pings.

No dependency: the protocol is one datagram to the unix socket named by
$NOTIFY_SOCKET (a leading '@' means the abstract namespace). Outside systemd
the variable is unset and every call is a no-op.
"""

from __future__ import annotations

import os
import socket

import anyio


def notify(state: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. "READY=1") to systemd; returns False when not under systemd."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(state.encode(), address)
    return True


def watchdog_interval(*, environ: dict[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of WATCHDOG_USEC), or None if not asked for."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def watchdog() -> None:
    """Ping systemd's watchdog for as long as the event loop keeps running.

    The ping comes from the loop itself, so a stalled loop (the failure that
    matters) misses its pings and systemd restarts the agent.
    """
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await anyio.sleep(interval)
