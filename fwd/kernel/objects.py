"""Owner classes over libbpf: a BPF object file and the programs in it.

``BpfObject`` owns a ``struct bpf_object *``; the :class:`Program` and
:class:`~fwd.kernel.maps.Map` handles it hands out borrow its fds, so closing the
object invalidates them and any later use raises BpfError. Programs and maps
opened from a bpffs pin own their fd instead.

Everything here is synchronous and thread-agnostic: each call is one short
syscall or libbpf call, so actors call it directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from fwd.kernel import libbpf
from fwd.kernel.handle import Handle
from fwd.kernel.maps import Map, map_from_pinned
from fwd.errors import BpfError

__all__ = [
    "BpfObject",
    "Map",
    "Program",
    "TestRunResult",
    "map_from_pinned",
    "program_from_pinned",
]

# Room for XDP programs that grow the packet (bpf_xdp_adjust_head/tail).
_DEFAULT_OUT_SLACK = 4096


@dataclass(frozen=True)
class TestRunResult:
    """What one BPF_PROG_TEST_RUN returned."""

    retval: int
    duration_ns: int  # average per repetition, as the kernel measured it
    data_out: bytes


class Program(Handle):
    """A BPF program: borrowed from a BpfObject, or opened from a pin (owns its fd)."""

    _kind = "program"

    def __init__(
        self, name: str, *, owner: BpfObject | None = None, ptr: int = 0, fd: int = -1
    ) -> None:
        super().__init__(name, owner=owner, fd=fd)
        self._ptr = ptr

    def _borrowed_fd(self) -> int:
        return int(libbpf.bpf_program__fd(self._ptr))

    @classmethod
    def from_pinned(cls, path: str | os.PathLike[str]) -> Program:
        """Open the program pinned at ``path``; the returned handle owns its fd."""
        p = os.fspath(path)
        fd, info = libbpf.obj_get_info(p, libbpf.ProgInfo(), "program")
        prog = cls(info.name.decode(errors="replace"), fd=fd)
        prog._pin_path = p
        return prog

    def _info(self) -> libbpf.ProgInfo:
        return libbpf.obj_info(self.fd, libbpf.ProgInfo(), self.label)

    @property
    def id(self) -> int:
        """The kernel's program id (as ``bpftool prog`` and ``ip link`` show it)."""
        return int(self._info().id)

    @property
    def type(self) -> int:
        """The program type (``enum bpf_prog_type``)."""
        return int(self._info().type)

    def test_run(
        self,
        data: bytes,
        *,
        repeat: int = 1,
        ingress_ifindex: int = 0,
        data_out_size: int | None = None,
    ) -> TestRunResult:
        """Run the program on ``data`` with BPF_PROG_TEST_RUN.

        ``ingress_ifindex`` (an ifindex in the caller's network namespace) is
        passed in an ``xdp_md`` context, so ``ctx->ingress_ifindex`` reads it.
        ``data_out`` holds the packet as the program left it; if the program
        grows it past ``data_out_size`` the call fails with ENOSPC. With
        ``data_out_size=0`` nothing is copied back (``data_out`` is empty).
        """
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        fd = self.fd
        out_size = (
            len(data) + _DEFAULT_OUT_SLACK if data_out_size is None else data_out_size
        )
        data_in = ctypes.create_string_buffer(data, len(data))
        if out_size < 0:
            raise ValueError(f"data_out_size must be >= 0, got {out_size}")
        data_out = ctypes.create_string_buffer(max(out_size, 1))
        opts = libbpf.new_opts(libbpf.TestRunOpts)
        opts.data_in = ctypes.addressof(data_in)
        opts.data_size_in = len(data)
        if out_size:
            # Never pass a buffer with size 0: the kernel reads that as "no limit".
            opts.data_out = ctypes.addressof(data_out)
            opts.data_size_out = out_size
        opts.repeat = repeat
        ctx = None
        if ingress_ifindex:
            ctx = libbpf.XdpMd(
                data=0, data_end=len(data), ingress_ifindex=ingress_ifindex
            )
            opts.ctx_in = ctypes.addressof(ctx)
            opts.ctx_size_in = ctypes.sizeof(ctx)
        libbpf.check(
            int(libbpf.bpf_prog_test_run_opts(fd, ctypes.byref(opts))),
            f"bpf_prog_test_run_opts({self.label}, {len(data)} bytes)",
        )
        size = min(int(opts.data_size_out), out_size)  # 0 when nothing was asked for
        return TestRunResult(int(opts.retval), int(opts.duration), data_out.raw[:size])


def program_from_pinned(path: str | os.PathLike[str]) -> Program:
    """Open the program pinned at ``path`` (see :meth:`Program.from_pinned`)."""
    return Program.from_pinned(path)


class BpfObject:
    """An opened (and, after :meth:`load`, loaded) BPF ELF object file."""

    def __init__(self, ptr: int, path: str) -> None:
        """Wrap a ``struct bpf_object *``; use :meth:`open` instead."""
        self._ptr: int | None = ptr
        self._path = path
        self._loaded = False
        self._programs: dict[str, Program] = {}
        self._maps: dict[str, Map] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> BpfObject:
        """Open the object file at ``path`` (parse ELF and BTF; nothing reaches the kernel)."""
        p = os.fspath(path)
        ptr = libbpf.check_ptr(
            libbpf.bpf_object__open_file(os.fsencode(p), None),
            f"bpf_object__open_file({p})",
        )
        return cls(ptr, p)

    @property
    def path(self) -> str:
        """The object file this was opened from."""
        return self._path

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` succeeded."""
        return self._loaded

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._ptr is None

    def _handle(self) -> int:
        if self._ptr is None:
            raise BpfError(f"bpf object {self._path} is closed", errno.EBADF)
        return self._ptr

    def _map_ptr(self, name: str) -> int:
        return libbpf.check_ptr(
            libbpf.bpf_object__find_map_by_name(self._handle(), name.encode()),
            f"bpf_object__find_map_by_name({self._path}, {name!r})",
        )

    def set_max_entries(self, map_name: str, n: int) -> None:
        """Resize a map before :meth:`load` (libbpf refuses with EBUSY afterwards)."""
        libbpf.check(
            int(libbpf.bpf_map__set_max_entries(self._map_ptr(map_name), n)),
            f"bpf_map__set_max_entries({self._path}, {map_name!r}, {n})",
        )

    def reuse_map_fd(self, map_name: str, fd: int) -> None:
        """Use an existing map (e.g. opened from a pin) instead of creating one at :meth:`load`.

        libbpf duplicates ``fd``; the caller still owns (and closes) its own.
        """
        libbpf.check(
            int(libbpf.bpf_map__reuse_fd(self._map_ptr(map_name), fd)),
            f"bpf_map__reuse_fd({self._path}, {map_name!r})",
        )

    def set_initial_value(self, map_name: str, data: bytes) -> None:
        """Set a global-data map's contents (e.g. ``.rodata`` settings) before :meth:`load`."""
        buf = ctypes.create_string_buffer(data, len(data))  # libbpf copies it
        libbpf.check(
            int(
                libbpf.bpf_map__set_initial_value(
                    self._map_ptr(map_name), buf, len(data)
                )
            ),
            f"bpf_map__set_initial_value({self._path}, {map_name!r}, {len(data)} bytes)",
        )

    def load(self) -> None:
        """Create the maps and load (verify) the programs in the kernel."""
        libbpf.check(
            int(libbpf.bpf_object__load(self._handle())),
            f"bpf_object__load({self._path})",
        )
        self._loaded = True

    def program(self, name: str) -> Program:
        """The program whose C function is called ``name``."""
        self._handle()  # a cached handle must not outlive close() either
        prog = self._programs.get(name)
        if prog is None:
            ptr = libbpf.check_ptr(
                libbpf.bpf_object__find_program_by_name(self._handle(), name.encode()),
                f"bpf_object__find_program_by_name({self._path}, {name!r})",
            )
            prog = self._programs[name] = Program(name, owner=self, ptr=ptr)
        return prog

    def programs(self) -> dict[str, Program]:
        """Every program in the object, by name."""
        h = self._handle()
        ptr = libbpf.bpf_object__next_program(h, None)
        while ptr:
            self.program(libbpf.bpf_program__name(ptr).decode())
            ptr = libbpf.bpf_object__next_program(h, ptr)
        return dict(self._programs)

    def map(self, name: str) -> Map:
        """The map called ``name`` (global data maps are e.g. ``<obj>.rodata``)."""
        self._handle()
        m = self._maps.get(name)
        if m is None:
            m = self._maps[name] = Map(name, owner=self, ptr=self._map_ptr(name))
        return m

    def maps(self) -> dict[str, Map]:
        """Every map in the object, by name."""
        h = self._handle()
        ptr = libbpf.bpf_object__next_map(h, None)
        while ptr:
            self.map(libbpf.bpf_map__name(ptr).decode())
            ptr = libbpf.bpf_object__next_map(h, ptr)
        return dict(self._maps)

    def close(self) -> None:
        """Close the object: its program and map fds go, unless pinned or attached. Idempotent."""
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            libbpf.bpf_object__close(ptr)

    def __enter__(self) -> Self:
        self._handle()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # nothing sensible to do during GC
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("loaded" if self._loaded else "open")
        return f"<BpfObject {self._path} {state}>"
