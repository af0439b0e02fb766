"""Throwaway network namespaces for root tests.

The idea follows pyroute2's test fixtures (a registry of what a test made, torn
down whatever happened) but is written for our tests: everything goes through
``ip`` so a failure reads like the command an operator would type, and every
namespace, link and bpffs directory a helper creates is removed on cleanup.

Names are ``<prefix>-<pid>-<n>`` so concurrent runs never collide; the prefix
defaults to ``$FWD_TEST_NS_PREFIX`` or ``fwdt``. Test addresses come only from
198.18.0.0/15 and 2001:2::/48.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
BPFFS = Path("/sys/fs/bpf")
"""Where test pins go; use :func:`bpffs` to get it, which makes sure it is a bpffs."""
TEST_NET4 = ipaddress.IPv4Network("198.18.0.0/15")
TEST_NET6 = ipaddress.IPv6Network("2001:2::/48")

_counter = itertools.count(1)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


def bpffs() -> Path:
    """The bpffs root for test pins, mounted first if it is not one (a fresh machine, a
    private mount namespace): the same check and mount the agent does at start."""
    from fwd.kernel.bpffs import ensure

    ensure(BPFFS)
    return BPFFS


def default_prefix() -> str:
    return os.environ.get("FWD_TEST_NS_PREFIX", "fwdt")


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, and raise with its stderr if it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def run_in(ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``ns`` (``ip netns exec``)."""
    return run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """Move the *current thread* into network namespace ``ns``, and back on exit.

    Sockets (netlink included) and bpf_link_create calls made by this thread
    while inside act on ``ns``. Other threads (anyio.to_thread workers, the
    default executor) stay where they were, and so do subprocesses started by
    other threads; subprocesses this thread starts inherit ``ns``.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(NETNS_RUN_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


class Netns:
    """Creates namespaces, links, addresses and bpffs dirs, and removes them all.

    Every creation is recorded *before* the command runs, so a half-made object
    is still cleaned up.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or default_prefix()
        self.namespaces: list[str] = []
        self.links: list[tuple[str, str]] = []  # (ns, ifname)
        self.pin_dirs: list[Path] = []

    # --- namespaces -----------------------------------------------------------

    def make_netns(self, prefix: str | None = None) -> str:
        """Create a fresh namespace named ``<prefix>-<pid>-<n>`` with lo up."""
        name = f"{prefix or self.prefix}-{os.getpid()}-{next(_counter)}"
        self.namespaces.append(name)
        run(["ip", "netns", "add", name])
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    # --- links ------------------------------------------------------------------

    def veth_pair(self, ns_a: str, name_a: str, ns_b: str, name_b: str, *, up: bool = True) -> None:
        """Create veth ``name_a`` in ``ns_a`` whose peer ``name_b`` lives in ``ns_b``."""
        self.links.append((ns_a, name_a))
        self.links.append((ns_b, name_b))
        run(["ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b])
        if up:
            self.link_up(ns_a, name_a)
            self.link_up(ns_b, name_b)

    def plain_link(self, ns: str, name: str, kind: str = "ifb") -> None:
        """Create a standalone link in ``ns`` (down).

        The default kind is ifb because this kernel has no dummy driver built
        in (and no modules to load); ifb is a plain software device too.
        """
        self.links.append((ns, name))
        run(["ip", "-n", ns, "link", "add", name, "type", kind])

    def batch(self, ns: str, commands: Sequence[str]) -> None:
        """Run many ``ip`` commands in one process (``ip -n ns -batch -``): a burst."""
        proc = subprocess.run(
            ["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n",
            capture_output=True, text=True, timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ip -batch failed: {proc.stderr.strip()}")

    def link_up(self, ns: str, name: str) -> None:
        run(["ip", "-n", ns, "link", "set", name, "up"])

    def del_link(self, ns: str, name: str) -> None:
        run(["ip", "-n", ns, "link", "del", name])
        with contextlib.suppress(ValueError):
            self.links.remove((ns, name))

    def ifindex(self, ns: str, name: str) -> int:
        return int(run_in(ns, ["cat", f"/sys/class/net/{name}/ifindex"]).stdout)

    def link_names(self, ns: str) -> dict[int, str]:
        """The kernel's link table of ``ns``: ifindex -> name."""
        out = run(["ip", "-n", ns, "-o", "link", "show"]).stdout
        table: dict[int, str] = {}
        for line in out.splitlines():
            index, name = line.split(":", 2)[:2]
            table[int(index)] = name.strip().split("@", 1)[0]
        return table

    # --- addresses --------------------------------------------------------------

    @staticmethod
    def addr4(net: int, host: int) -> str:
        """198.18.<net>.<host>/24 — always inside 198.18.0.0/15."""
        addr = ipaddress.IPv4Interface(f"198.18.{net}.{host}/24")
        assert addr.network.subnet_of(TEST_NET4)
        return str(addr)

    @staticmethod
    def addr6(net: int, host: int) -> str:
        """2001:2:0:<net>::<host>/64 — always inside 2001:2::/48."""
        addr = ipaddress.IPv6Interface(f"2001:2:0:{net:x}::{host:x}/64")
        assert addr.network.subnet_of(TEST_NET6)
        return str(addr)

    def add_address(self, ns: str, dev: str, cidr: str) -> None:
        """Add a test address (refuses anything outside the test ranges)."""
        iface = ipaddress.ip_interface(cidr)
        if isinstance(iface, ipaddress.IPv4Interface):
            inside = iface.network.subnet_of(TEST_NET4)
            argv = ["ip", "-4", "-n", ns, "addr", "add", cidr, "dev", dev]
        else:
            inside = iface.network.subnet_of(TEST_NET6)
            argv = ["ip", "-6", "-n", ns, "addr", "add", cidr, "dev", dev, "nodad"]
        if not inside:
            raise ValueError(f"{cidr} is outside the test ranges")
        run(argv)

    # --- bpffs --------------------------------------------------------------------

    def pin_dir(self) -> Path:
        """A fresh directory of our own under /sys/fs/bpf (a bpffs, mounted if need be)."""
        path = bpffs() / f"fwd-test-{os.getpid()}-{next(_counter)}"
        self.pin_dirs.append(path)
        path.mkdir()
        return path

    # --- teardown -----------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Remove everything made; returns the errors (cleanup never stops half-way)."""
        errors: list[str] = []
        for ns, name in reversed(self.links):
            # Links die with their namespace; delete explicitly only what still exists.
            if ns in self.namespaces and (NETNS_RUN_DIR / ns).exists():
                proc = run(["ip", "-n", ns, "link", "del", name], check=False)
                if proc.returncode != 0 and "Cannot find device" not in proc.stderr:
                    errors.append(proc.stderr.strip())
        self.links.clear()
        for ns in reversed(self.namespaces):
            if (NETNS_RUN_DIR / ns).exists():
                proc = run(["ip", "netns", "del", ns], check=False)
                if proc.returncode != 0:
                    errors.append(proc.stderr.strip())
        self.namespaces.clear()
        for path in reversed(self.pin_dirs):
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(f"{path}: {exc}")
        self.pin_dirs.clear()
        return errors


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A Netns helper whose namespaces, links and pin dirs vanish after the test."""
    require_root()
    helper = Netns()
    try:
        yield helper
    finally:
        errors = helper.cleanup()
        assert not errors, f"netns cleanup: {errors}"
