"""Attaching the XDP program to one interface: the seam Links does it through.

``XdpAttacher`` is the real one (fwd.kernel.xdp: a bpf_link in the best mode);
tests pass a fake with the same methods. Every method blocks (syscalls, and a
driver may be slow): Links calls them from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from fwd.core.attach import AttachMode

log = structlog.get_logger("fwd.links")


class AttachedLink(Protocol):
    """What Links needs of an attachment (fwd.kernel.xdp.XdpLink provides it)."""

    @property
    def id(self) -> int: ...

    @property
    def prog_id(self) -> int: ...

    def pin(self, path: str) -> None: ...

    def unpin(self) -> None: ...

    def close(self) -> None: ...


class Attacher(Protocol):
    """The I/O seam: the real one wraps fwd.kernel.xdp, tests may pass a fake."""

    def attach(self, prog_fd: int, ifindex: int) -> tuple[AttachedLink, AttachMode]: ...

    def detach(self, link: AttachedLink) -> None: ...

    def adopt(self, prog_fd: int, path: Path) -> tuple[AttachedLink, AttachMode]:
        """Take over the link pinned at ``path`` and make it run ``prog_fd``."""
        ...


class XdpAttacher:
    """The real attacher: best XDP mode via a bpf_link (offload, native, generic)."""

    def attach(self, prog_fd: int, ifindex: int) -> tuple[AttachedLink, AttachMode]:
        from fwd.kernel.xdp import attach_xdp_best

        return attach_xdp_best(prog_fd, ifindex)

    def detach(self, link: AttachedLink) -> None:
        from fwd.kernel.xdp import XdpLink

        assert isinstance(link, XdpLink)
        link.detach()

    def adopt(self, prog_fd: int, path: Path) -> tuple[AttachedLink, AttachMode]:
        from fwd.kernel.xdp import XdpLink, query_xdp

        link = XdpLink.open_pinned(path)
        try:
            link.update(prog_fd)  # atomic swap: the device is never without XDP
            _, mode = query_xdp(link.ifindex)
        except BaseException:
            link.close()
            raise
        return link, mode


@dataclass
class Attached:
    """What attaching did (``link`` None: it failed, ``error`` says why)."""

    link: AttachedLink | None
    mode: AttachMode
    adopted: bool = False
    pinned: bool = False
    link_id: int = 0
    prog_id: int = 0
    error: str = ""


def attach(
attacher: Attacher, prog_fd: int, ifindex: int, name: str, path: Path | None
) -> Attached:
    """Adopt the link pinned at ``path`` or attach anew, then pin it there (blocking)."""
    adopted = False
    link: AttachedLink
    if path is not None and path.exists():
        # A previous agent pinned a link here: swap our program into it, so
        # the device is never without XDP across a restart.
        try:
            link, mode = attacher.adopt(prog_fd, path)
            adopted = True
        except Exception as exc:
            # Defunct (device gone and ifindex reused) or not ours: drop it.
            log.warning("stale_link_pin_removed", path=str(path), error=str(exc))
            path.unlink(missing_ok=True)
    if not adopted:
        try:
            link, mode = attacher.attach(prog_fd, ifindex)
        except Exception as exc:  # any failure is reported on the interface
            log.error("xdp_attach_failed", iface=name, ifindex=ifindex, error=str(exc))
            return Attached(None, AttachMode.NONE, error=str(exc))
    done = Attached(link, mode, adopted=adopted, pinned=adopted)
    try:
        done.link_id, done.prog_id = link.id, link.prog_id
    except Exception as exc:  # the ids are for reporting only
        log.warning("xdp_link_info_failed", iface=name, ifindex=ifindex, error=str(exc))
    if not adopted and path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            link.pin(str(path))
            done.pinned = True
        except Exception as exc:
            # Enforcement is in place; only survival across restarts is lost.
            done.error = f"pin {path}: {exc}"
            log.error(
                "xdp_link_pin_failed", iface=name, ifindex=ifindex, path=str(path),
                error=str(exc),
            )  # fmt: skip
    log.info(
        "xdp_adopted" if adopted else "xdp_attached", iface=name, ifindex=ifindex,
        mode=mode.value, prog_id=done.prog_id, link_id=done.link_id,
    )  # fmt: skip
    return done
