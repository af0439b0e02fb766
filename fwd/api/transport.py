"""How the API is reached: the unix socket (created safely, mode 0660, group fwd),
the TCP listener's address, and a receive-size limit patched into grpclib."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
from pathlib import Path
from typing import Any

import betterproto2
from grpclib import GRPCError
from grpclib.const import Status

from fwd.api import tls, wire

SOCKET_MODE = 0o660
# Members of this group (when it exists) may use the API socket; others may not.
SOCKET_GROUP = "fwd"
SOCKET_DIR_MODE = 0o755


def limit_request_size(handler: Any, limit: int) -> Any:
    """Wrap a grpclib method so each request message larger than ``limit`` is refused
    with RESOURCE_EXHAUSTED *before* its body is read into memory.

    grpclib has no receive limit of its own: it would buffer whatever length the
    5-byte gRPC message prefix claims. This reads that prefix itself and otherwise
    does what grpclib's Stream.recv_message does (private attributes of grpclib
    0.4; tests/e2e/test_fuzz_api.py sends an oversized request to keep this honest).
    """

    async def limited(stream: Any) -> None:
        async def recv_message() -> Any:
            meta = await stream._stream.recv_data(5)
            if not meta:
                return None
            if meta[0]:
                raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
            size = int.from_bytes(meta[1:5], "big")
            if size > limit:
                raise GRPCError(
                    Status.RESOURCE_EXHAUSTED,
                    f"request message of {size} bytes exceeds the limit of {limit} bytes",
                )
            body = await stream._stream.recv_data(size)
            name = getattr(stream._recv_type, "__name__", "request")
            try:
                message = stream._codec.decode(body, stream._recv_type)
            except Exception:  # any parse failure of untrusted bytes is the caller's error
                raise GRPCError(
                    Status.INVALID_ARGUMENT, f"request is not a valid {name} message"
                ) from None
            if isinstance(message, betterproto2.Message):
                try:
                    wire.check_types(message)
                except wire.WireTypeError as exc:
                    raise GRPCError(Status.INVALID_ARGUMENT, f"{name}: {exc}") from None
            (message,) = await stream._dispatch.recv_message(message)
            return message

        stream.recv_message = recv_message
        await handler(stream)

    return limited


def split_hostport(value: str) -> tuple[str, int]:
    """"HOST:PORT" or "[v6]:PORT" -> (host, port), with an error naming --listen."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise tls.TlsConfigError(f"--listen: expected HOST:PORT, not {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def listen_unix(path: Path) -> socket.socket:
    """A listening unix socket at ``path`` with mode 0660, created without a window
    in which it is reachable with looser permissions."""
    path.parent.mkdir(mode=SOCKET_DIR_MODE, parents=True, exist_ok=True)
    remove_socket(path, stale=True)
    # Bind under a temporary name, fix the mode, then rename into place: clients
    # can only ever find the socket with its final permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock.bind(str(tmp))
        os.chmod(tmp, SOCKET_MODE)
        gid = socket_group()
        if gid is not None:
            os.chown(tmp, 0 if os.geteuid() == 0 else -1, gid)
        os.replace(tmp, path)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return sock


def socket_group() -> int | None:
    """The gid of the group allowed to use the API socket, if that group exists."""
    try:
        return grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:
        return None


def remove_socket(path: Path, *, stale: bool = False) -> None:
    """Remove the socket file at ``path``; refuse to delete anything but a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        if stale:
            raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
        return
    if stale and in_use(path):
        raise OSError(errno.EADDRINUSE, f"another process is serving on {path}")
    path.unlink(missing_ok=True)


def in_use(path: Path) -> bool:
    """Whether something accepts connections on the unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False  # ECONNREFUSED: a leftover of a process that died
        return True
