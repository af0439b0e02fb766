"""One agent per state: exclusive locks on the state directory and the pin directory.

Two agents given the same ``--state-dir`` or the same ``--bpffs`` would fight
over the same SQLite history and the same pinned links (the second adopts and
replaces the first one's program on every link). So before it touches the
kernel, ``fwd agent`` takes an exclusive ``flock`` on

* ``<state-dir>/agent.lock`` (a regular file holding the owner's PID, for people), and
* the pin directory itself (bpffs holds no regular files, but a directory can be
  flocked on any filesystem),

and gives up at once, changing nothing, when either is held. The kernel drops
an flock when its holder exits, even by SIGKILL: a stale lock file never blocks
a restart. The holder's PID is read from /proc/locks (the kernel's record of
every lock: right even for the pin directory), else from the lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from fwd.errors import FwdError

LOCK_NAME = "agent.lock"


class AlreadyRunning(FwdError):
    """Another agent holds the state directory or pin directory (the message names its PID)."""

    def __init__(self, what: str, path: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"another agent ({who}) is running with {what} {path}; "
            "stop it first (this agent changed nothing)"
        )
        self.pid = pid
        self.path = path


def lock_holder(fd: int) -> int | None:
    """The PID holding an flock on the file open as ``fd``, from /proc/locks."""
    st = os.fstat(fd)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF"; blocked waiters
                # carry "->" after the number and are not holders.
                if len(parts) >= 6 and parts[1] == "FLOCK":
                    if parts[5] == want and parts[4].isdigit():
                        return int(parts[4])
    except OSError:
        pass
    return None


class AgentLock:
    """The locks of one agent; release with ``close()`` (or ``with``), or let exit drop them."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def state_dir(self, state_dir: str | os.PathLike[str]) -> None:
        """Lock ``<state_dir>/agent.lock`` (making the directory) and write our PID in it."""
        path = Path(state_dir)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = path / LOCK_NAME
        fd = self._take(lock, os.O_RDWR | os.O_CREAT, "state dir", path)
        if fd is not None:
            pid = f"{os.getpid()}\n".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)

    def pin_dir(self, bpffs_dir: str | os.PathLike[str]) -> bool:
        """Lock the pin directory, making it if its parent allows; False if it cannot exist
        yet (no bpffs mounted above it: nothing can be pinned there either)."""
        path = Path(bpffs_dir)
        if path in self._fds:
            return True
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            return False
        self._take(path, os.O_RDONLY | os.O_DIRECTORY, "bpffs", path)
        return True

    def _take(self, path: Path, flags: int, what: str, shown: Path) -> int | None:
        if path in self._fds:
            return None
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = lock_holder(fd) or _pid_in(path)
            os.close(fd)
            raise AlreadyRunning(what, shown, pid) from None
        except BaseException:
            os.close(fd)
            raise
        self._fds[path] = fd
        return fd

    def close(self) -> None:
        """Release every lock (closing the descriptor drops the flock)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pid_in(path: Path) -> int | None:
    if path.is_dir():
        return None
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split()[0])
    return None
