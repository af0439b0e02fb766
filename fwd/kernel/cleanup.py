"""``fwd agent --cleanup``: remove every XDP attachment and pin this agent owns, nothing else.

What fwd owns is exactly what is pinned under its bpffs directory: link pins
(``links/<ifindex>``) are detached, then every pin there is removed. XDP
programs attached by anything else (another tool, a link fwd did not pin) are
left alone, and so is the state directory (the desired policy).
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from fwd.core.agentlock import AgentLock
from fwd.kernel.xdp import XdpLink
from fwd.errors import FwdError

log = structlog.get_logger("fwd.kernel.cleanup")


def cleanup(bpffs_dir: str | Path) -> list[str]:
    """Detach fwd's pinned links and remove its pins; returns what was removed.

    Raises FwdError if something it owns could not be removed (after trying all),
    and AlreadyRunning, removing nothing, while an agent holds the directory.
    """
    root = Path(bpffs_dir)
    if not root.exists():
        return []
    with AgentLock() as lock:
        lock.pin_dir(root)
        return _cleanup(root)


def _cleanup(root: Path) -> list[str]:
    removed: list[str] = []
    failures: list[str] = []
    links = root / "links"
    for pin in sorted(links.iterdir()) if links.is_dir() else []:
        try:
            link = XdpLink.open_pinned(pin)
        except FwdError as exc:
            failures.append(f"{pin}: {exc}")
            continue
        try:
            ifindex = link.ifindex
            if ifindex:  # a defunct link (device gone) has nothing to detach
                link.detach()
            link.unpin()
            removed.append(f"link {pin.name} (ifindex {ifindex})")
            log.info("xdp_detached", ifindex=ifindex, pin=str(pin))
        except FwdError as exc:
            failures.append(f"{pin}: {exc}")
        finally:
            link.close()
    # Whatever else fwd pinned (maps, programs), then the now empty directories.
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            try:
                path.unlink()
                removed.append(f"pin {path.relative_to(root)}")
            except OSError as exc:
                failures.append(f"{path}: {exc.strerror}")
        try:
            Path(dirpath).rmdir()
        except OSError as exc:
            failures.append(f"{dirpath}: {exc.strerror}")
    if failures:
        raise FwdError("cleanup incomplete: " + "; ".join(failures))
    return removed
