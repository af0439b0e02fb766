"""Make sure a pin directory lies on a bpf filesystem, mounting one where it belongs.

A fresh machine (no systemd), a container, or any ``ip netns exec`` (which
remounts /sys) has no bpffs at /sys/fs/bpf. Pinning there then fails with
ENOENT, and on another filesystem (a tmpfs) with an EPERM that names nothing.
:func:`ensure` checks the filesystem magic of the pin directory (statfs) and,
when it is not a bpffs and the directory is under the conventional mount point
/sys/fs/bpf, mounts one there (as systemd's sys-fs-bpf.mount and Cilium do);
anything else is refused with one line saying what to mount where.

The check and the mount run under an flock on the mount point, so two
processes starting at once never stack two bpffs instances (the second would
hide the first one's pins).

Run as a script (``python -m fwd.kernel.bpffs [DIR]``) it is the one helper the
tests, demos and benchmarks use: it ensures DIR (default /sys/fs/bpf) lies on a
bpffs and prints it. It imports nothing outside the standard library, so the
system python3 can run it from a checkout (``PYTHONPATH=.``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from fwd.errors import FwdError

BPF_FS_MAGIC = 0xCAFE4A11
MOUNT_POINT = Path("/sys/fs/bpf")
"""Where bpffs is mounted by convention (systemd, Cilium, iproute2, bpftool)."""

# A few magics worth naming in an error (linux/magic.h).
_FS_NAMES = {
    0x01021994: "tmpfs",
    0x62656572: "sysfs",
    0x9FA0: "proc",
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x794C7630: "overlayfs",
    0x858458F6: "ramfs",
    0x6E736673: "nsfs",
}
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_libc.statfs.restype = ctypes.c_int
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int


class BpffsError(FwdError):
    """No bpffs at the pin directory and none could be mounted (the message says what to do)."""


def fs_magic(path: str | os.PathLike[str]) -> int:
    """The filesystem magic (statfs ``f_type``) of ``path``; raises OSError."""
    # struct statfs is 120 bytes on 64-bit Linux and f_type (a long) comes first.
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def fs_name(magic: int) -> str:
    """A readable name for a filesystem magic (``0x...`` when unknown)."""
    return _FS_NAMES.get(magic, f"filesystem 0x{magic:x}")


def is_bpffs(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` exists and lies on a bpf filesystem."""
    try:
        return fs_magic(path) == BPF_FS_MAGIC
    except OSError:
        return False


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on directory ``path`` (the mount point, before any mount)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def mount(mount_point: Path = MOUNT_POINT) -> None:
    """Mount a bpffs at ``mount_point`` (mode 0700, nosuid, nodev, noexec, like systemd)."""
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _libc.mount(b"bpf", os.fsencode(mount_point), b"bpf", flags, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(mount_point))


def ensure(pin_dir: str | os.PathLike[str], *, mount_point: Path = MOUNT_POINT) -> bool:
    """Make ``pin_dir`` a directory on a bpffs; returns True if a bpffs was mounted.

    Mounts one at ``mount_point`` when ``pin_dir`` lies under it on another
    filesystem (usually sysfs's empty /sys/fs/bpf). Raises :class:`BpffsError`
    with one line naming what to mount where when ``pin_dir`` is on another
    filesystem elsewhere, or when mounting fails (no CAP_SYS_ADMIN, a container).
    """
    path = Path(os.path.abspath(pin_dir))
    mounted = False
    base = _existing(path)
    magic = _magic_or_fail(base)
    if magic != BPF_FS_MAGIC:
        if not _under(path, mount_point):
            raise BpffsError(
                f"--bpffs {path} is not on a bpffs ({base} is on {fs_name(magic)}): "
                f"mount one there (mount -t bpf bpf {base}) or pick a directory under "
                f"{mount_point}"
            )
        if not mount_point.is_dir():
            raise BpffsError(
                f"--bpffs {path}: {mount_point} does not exist (is sysfs mounted on /sys, "
                "and the kernel built with CONFIG_BPF_SYSCALL?)"
            )
        with _locked(mount_point):
            # Another process may have mounted it while we waited for the lock.
            if not is_bpffs(mount_point):
                try:
                    mount(mount_point)
                except OSError as exc:
                    raise BpffsError(
                        f"--bpffs {path}: {mount_point} is not a bpffs and mounting one failed "
                        f"({exc.strerror}): run 'mount -t bpf bpf {mount_point}' as root (in a "
                        f"container, bind-mount the host's {mount_point}), or start with --no-pin"
                    ) from exc
                mounted = True
        base = _existing(path)
        magic = _magic_or_fail(base)
        if magic != BPF_FS_MAGIC:  # e.g. a non-bpffs mount below the mount point
            raise BpffsError(
                f"--bpffs {path} is not on a bpffs ({base} is on {fs_name(magic)}): "
                f"mount one there (mount -t bpf bpf {base})"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BpffsError(f"--bpffs {path}: cannot create it: {exc.strerror}") from exc
    return mounted


def _magic_or_fail(path: Path) -> int:
    try:
        return fs_magic(path)
    except OSError as exc:
        raise BpffsError(f"--bpffs {path}: statfs failed: {exc.strerror}") from exc


def private_mount_namespace() -> bool | None:
    """Whether this process runs in another mount namespace than PID 1 (``ip netns exec``,
    ``unshare -m``, a container): a bpffs it mounts lasts only as long as that namespace.
    None when it cannot tell (PID 1 is not ours to inspect, e.g. in a sandbox)."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m fwd.kernel.bpffs [DIR]``: ensure DIR (default /sys/fs/bpf) is on a bpffs."""
    args = sys.argv[1:] if argv is None else argv
    target = args[0] if args else str(MOUNT_POINT)
    try:
        if ensure(target):
            print(f"bpffs: mounted a bpffs at {MOUNT_POINT}", file=sys.stderr)
    except BpffsError as exc:
        print(f"bpffs: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
