"""The owner-handle base shared by programs, maps and links.

A handle is either *borrowed* from a :class:`fwd.kernel.objects.BpfObject` (the
object owns the fd; closing the object invalidates the handle) or *owns* a file
descriptor of its own (opened from a bpffs pin, or a link). Either way, any use
after close raises :class:`fwd.errors.BpfError` instead of touching a dead or,
worse, reused fd (the llvmlite ``ObjectRef`` lesson).
"""

from __future__ import annotations

import contextlib
import errno
import os
from types import TracebackType
from typing import Protocol, Self

from fwd.kernel import libbpf
from fwd.errors import BpfError


class Owner(Protocol):
    """What a borrowed handle needs from its owner: a liveness check."""

    def _handle(self) -> int: ...


class Handle:
    """Base of Program, Map and XdpLink: fd ownership, pinning, close-once."""

    _kind = "bpf object"

    def __init__(self, name: str, *, owner: Owner | None = None, fd: int = -1) -> None:
        self._name = name
        self._owner = owner
        self._own_fd = fd  # only when owner is None
        self._closed = False
        self._pin_path: str | None = None

    # --- identity ------------------------------------------------------------

    @property
    def name(self) -> str:
        """The object's name (as in the BPF object file, or as the kernel reports it)."""
        return self._name

    @property
    def label(self) -> str:
        """``kind 'name'``, for error messages."""
        return f"{self._kind} {self._name!r}"

    @property
    def closed(self) -> bool:
        """Whether this handle (or the object owning it) has been closed."""
        return self._closed or (
            self._owner is not None and getattr(self._owner, "closed", False)
        )

    @property
    def fd(self) -> int:
        """The file descriptor; raises BpfError after close or before the owner is loaded."""
        if self._closed:
            raise BpfError(f"{self.label} is closed", errno.EBADF)
        if self._owner is None:
            return self._own_fd
        self._owner._handle()  # raises if the owning object is closed
        fd = self._borrowed_fd()
        if fd < 0:
            raise BpfError(f"{self.label} has no fd: load its object first", -fd)
        return fd

    def ensure_open(self) -> None:
        """Raise BpfError if this handle, or the object owning it, is closed."""
        self.fd  # noqa: B018 - the property raises when closed

    def _borrowed_fd(self) -> int:
        """The owner's fd for this handle (subclasses with owners override)."""
        raise NotImplementedError

    # --- pinning -------------------------------------------------------------

    @property
    def pin_path(self) -> str | None:
        """Where this handle was pinned (or opened from), if anywhere."""
        return self._pin_path

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin on a bpffs at ``path`` so the kernel object outlives this process."""
        p = os.fspath(path)
        libbpf.obj_pin(self.fd, p, self.label)
        self._pin_path = p

    def unpin(self, path: str | os.PathLike[str] | None = None) -> None:
        """Remove the pin at ``path`` (default: where this handle was pinned)."""
        p = os.fspath(path) if path is not None else self._pin_path
        if p is None:
            raise BpfError(f"{self.label} is not pinned", errno.ENOENT)
        try:
            os.unlink(p)
        except OSError as exc:
            raise BpfError(
                f"unpin {self.label} at {p}: {exc.strerror}", exc.errno or 0
            ) from exc
        if p == self._pin_path:
            self._pin_path = None

    # --- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Release the handle; an owned fd is closed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owner is None and self._own_fd >= 0:
            fd, self._own_fd = self._own_fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        if self.closed:
            raise BpfError(f"{self.label} is closed", errno.EBADF)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Owned fds must not leak; borrowed ones belong to the object.
        with contextlib.suppress(Exception):  # nothing sensible to do during GC
            self.close()
