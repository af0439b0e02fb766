"""XDP attachment through bpf_link, and what the kernel says is attached.

A bpf_link holds the attachment: closing its last fd detaches the program,
unless the link is pinned on a bpffs, which is how enforcement survives an
agent restart (the new agent adopts the pin with :meth:`XdpLink.open_pinned`).
Interface indexes are per network namespace: these calls act in the calling
thread's namespace.
"""

from __future__ import annotations

import ctypes
import os

import structlog

from fwd.kernel import libbpf
from fwd.kernel.handle import Handle
from fwd.kernel.objects import Program
from fwd.errors import BpfError, LinkError
from fwd.core.attach import AttachMode

log = structlog.get_logger(__name__)

_MODE_FLAGS = {
    AttachMode.NATIVE: libbpf.XDP_FLAGS_DRV_MODE,
    AttachMode.GENERIC: libbpf.XDP_FLAGS_SKB_MODE,
    AttachMode.OFFLOAD: libbpf.XDP_FLAGS_HW_MODE,
}

_ATTACHED = {
    libbpf.XDP_ATTACHED_NONE: AttachMode.NONE,
    libbpf.XDP_ATTACHED_DRV: AttachMode.NATIVE,
    libbpf.XDP_ATTACHED_SKB: AttachMode.GENERIC,
    libbpf.XDP_ATTACHED_HW: AttachMode.OFFLOAD,
}


class XdpLink(Handle):
    """An XDP bpf_link; owns its fd. Close without a pin detaches the program."""

    _kind = "xdp link"

    def __init__(self, fd: int, name: str, mode: AttachMode | None = None) -> None:
        """Wrap an owned link fd; use :func:`attach_xdp` or :meth:`open_pinned`."""
        super().__init__(name, fd=fd)
        self._mode = mode

    @classmethod
    def open_pinned(cls, path: str | os.PathLike[str]) -> XdpLink:
        """Open the link pinned at ``path`` (e.g. one a previous agent left)."""
        p = os.fspath(path)
        fd, info = libbpf.obj_get_info(p, libbpf.LinkInfo(), "link")
        if info.type != libbpf.BPF_LINK_TYPE_XDP:
            os.close(fd)
            raise BpfError(f"{p} is a bpf link of type {info.type}, not XDP", 22)
        link = cls(fd, f"ifindex {info.xdp_ifindex}")
        link._pin_path = p
        return link

    def _info(self) -> libbpf.LinkInfo:
        return libbpf.obj_info(self.fd, libbpf.LinkInfo(), self.label)

    @property
    def id(self) -> int:
        """The kernel's link id (``bpftool link``)."""
        return int(self._info().id)

    @property
    def prog_id(self) -> int:
        """The id of the attached program (0 once detached)."""
        return int(self._info().prog_id)

    @property
    def ifindex(self) -> int:
        """The interface the link attaches to (0 once detached or the device is gone)."""
        return int(self._info().xdp_ifindex)

    @property
    def mode(self) -> AttachMode | None:
        """The mode it was attached in, when this handle made the attachment."""
        return self._mode

    def detach(self) -> None:
        """Detach the program now, even if the link is pinned (the link becomes defunct)."""
        libbpf.check(
            int(libbpf.bpf_link_detach(self.fd)), f"bpf_link_detach({self.label})"
        )

    def update(self, prog: Program | int) -> None:
        """Swap the link's program for ``prog`` atomically: no packet goes unfiltered.

        This is how a restarted agent takes over a link a previous one pinned.
        """
        prog_fd = prog.fd if isinstance(prog, Program) else prog
        try:
            libbpf.check(
                int(libbpf.bpf_link_update(self.fd, prog_fd, None)),
                f"bpf_link_update({self.label})",
            )
        except BpfError as exc:
            raise LinkError(str(exc)) from exc

    def __repr__(self) -> str:
        return f"<XdpLink {self._name}{' closed' if self.closed else ''}>"


def attach_xdp(prog: Program | int, ifindex: int, mode: AttachMode) -> XdpLink:
    """Attach ``prog`` (a Program or a program fd) to ``ifindex`` in ``mode``.

    Raises LinkError (caused by the BpfError carrying the errno) if the kernel refuses.
    """
    flags = _MODE_FLAGS.get(mode)
    if flags is None:
        raise ValueError(f"cannot attach in mode {mode}")
    prog_fd = prog.fd if isinstance(prog, Program) else prog
    opts = libbpf.new_opts(libbpf.LinkCreateOpts)
    opts.flags = flags
    try:
        fd = libbpf.check(
            int(
                libbpf.bpf_link_create(
                    prog_fd, ifindex, libbpf.BPF_XDP, ctypes.byref(opts)
                )
            ),
            f"bpf_link_create(xdp {mode.value}, ifindex {ifindex})",
        )
    except BpfError as exc:
        raise LinkError(str(exc)) from exc
    return XdpLink(fd, f"ifindex {ifindex}", mode)


def attach_xdp_best(prog: Program | int, ifindex: int) -> tuple[XdpLink, AttachMode]:
    """Attach in the best mode the interface takes: native, else generic.

    Offload is skipped: it needs a program loaded for that very NIC
    (``prog_ifindex`` at load time, a verifier run by the NIC's driver), and
    fwd loads one program for all interfaces. Raises LinkError naming each
    mode's errno if none works.
    """
    log.debug("xdp_offload_skipped", ifindex=ifindex, reason="program not loaded for a NIC")
    failures: list[str] = []
    for mode in (AttachMode.NATIVE, AttachMode.GENERIC):
        try:
            return attach_xdp(prog, ifindex, mode), mode
        except LinkError as exc:
            cause = exc.__cause__
            code = cause.errno if isinstance(cause, BpfError) else 0
            failures.append(f"{mode.value}: {os.strerror(code)} (errno {code})")
            log.debug("xdp_attach_mode_failed", ifindex=ifindex, mode=mode.value, error=str(exc))
    raise LinkError(f"cannot attach XDP to ifindex {ifindex}: " + "; ".join(failures))


def query_xdp(ifindex: int) -> tuple[int, AttachMode]:
    """The XDP program id on ``ifindex`` and its mode, per the kernel (netlink).

    With programs in several modes at once (XDP_ATTACHED_MULTI) the native one
    is reported, else generic, else offload.
    """
    opts = libbpf.new_opts(libbpf.XdpQueryOpts)
    libbpf.check(
        int(libbpf.bpf_xdp_query(ifindex, 0, ctypes.byref(opts))),
        f"bpf_xdp_query(ifindex {ifindex})",
    )
    if opts.attach_mode == libbpf.XDP_ATTACHED_MULTI:
        for prog_id, mode in (
            (opts.drv_prog_id, AttachMode.NATIVE),
            (opts.skb_prog_id, AttachMode.GENERIC),
            (opts.hw_prog_id, AttachMode.OFFLOAD),
        ):
            if prog_id:
                return int(prog_id), mode
    return int(opts.prog_id), _ATTACHED.get(int(opts.attach_mode), AttachMode.NONE)
