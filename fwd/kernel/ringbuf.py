"""A direct reader of a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) through mmap.

Why not libbpf's ``ring_buffer__consume``: in libbpf 1.1 it drains until the
ring is empty, with no budget, so under a flood it held the event loop for 3 s
(DESIGN.md §8). This reader takes at most ``budget`` records per call.

Layout, as the kernel maps it (kernel/bpf/ringbuf.c, libbpf src/ringbuf.c):

* offset 0, one page, read-write: ``consumer_pos`` (u64) at its start;
* offset 1 page, read-only: one page whose start is ``producer_pos`` (u64),
  followed by the data area of ``max_entries`` bytes mapped **twice** back to
  back, so a record that wraps around the end is contiguous in memory;
* each record: an 8-byte header ``u32 len; u32 pg_off`` then ``len`` bytes;
  bit 31 of ``len`` (BUSY) means reserved but not yet committed, bit 30
  (DISCARD) means committed as discarded. Records start 8-byte aligned:
  a record occupies ``round_up(len + 8, 8)`` bytes.

Memory ordering: the kernel commits a record by clearing BUSY with a release
store after writing the data, and publishes ``producer_pos`` after setting
BUSY on the header. libbpf reads ``producer_pos`` and each header with
``smp_load_acquire`` and writes ``consumer_pos`` with ``smp_store_release``.
Here each of those is one aligned 8- or 4-byte access through ctypes
(ctypes ``from_address`` for the positions, a native-size ``struct`` read
of the header: one ``mov`` each, no tearing), and every access is a
separate C call, so the compiler cannot reorder them. On x86_64 (TSO) plain
loads have acquire and plain stores have release semantics, so that is
enough; the data of a record is copied only after its header was read as
committed. Other architectures would need real barriers: the reader refuses
to run there.

The map fd is pollable: it reports EPOLLIN while ``consumer_pos <
producer_pos``. The kernel's default wake-up policy only signals when the
consumer had caught up, so a caller must drain (in batches) until
:meth:`RingBuffer.consume` returns fewer records than its budget before it
waits on :meth:`RingBuffer.fileno` again.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct
from types import TracebackType
from typing import Protocol, Self

from fwd.core import abi
from fwd.kernel import libbpf
from fwd.errors import BpfError
from fwd.core.records import KernelEventStats, sum_event_stats

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8
_LEN_MASK = ~(BUSY_BIT | DISCARD_BIT) & 0xFFFFFFFF
# Native ("@") u32: struct copies it with one memcpy, i.e. one 4-byte load
# (the standard-size "<I" would assemble it byte by byte).
_HEADER = struct.Struct("@I")

# libc mmap/munmap: Python's mmap module hides the mapping's address, and a
# read-only mapping cannot be viewed through ctypes.from_buffer.
_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map(length: int, prot: int, fd: int, offset: int, what: str) -> int:
    addr = _mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise BpfError(f"mmap {what}: {os.strerror(err)} (errno {err})", err)
    return int(addr)


def record_size(length: int) -> int:
    """Bytes a record with ``length`` payload bytes occupies in the ring (header included)."""
    return (length + HDR_SIZE + 7) & ~7


class RingBuffer:
    """Owns a dup of a ring buffer map's fd and its two mappings; close once."""

    def __init__(self, map_fd: int) -> None:
        """Map the ring behind ``map_fd`` (which stays the caller's: it is dup'ed)."""
        self._fd, self._cons, self._prod, self._size = -1, 0, 0, 0
        self._view: memoryview | None = None
        if platform.machine() != "x86_64":
            # See the module docstring: plain loads/stores are acquire/release only on TSO.
            raise BpfError(
                f"ring buffer reader needs x86_64 ordering, not {platform.machine()}",
                errno.ENOTSUP,
            )
        info = libbpf.obj_info(map_fd, libbpf.MapInfo(), "ring buffer map")
        if info.type != libbpf.BPF_MAP_TYPE_RINGBUF:
            raise BpfError(f"map {info.name!r} is not a ring buffer (type {info.type})", errno.EINVAL)
        self._size = int(info.max_entries)
        self._mask = self._size - 1
        self._page = mmap.PAGESIZE
        self._fd = os.dup(map_fd)
        try:
            self._cons = _map(self._page, mmap.PROT_READ | mmap.PROT_WRITE, self._fd, 0, "consumer page")
            self._prod = _map(
                self._page + 2 * self._size, mmap.PROT_READ, self._fd, self._page, "producer/data"
            )
        except BaseException:
            self.close()
            raise
        # One view over both copies of the data area: a wrapping record is one slice.
        self._view = memoryview(
            (ctypes.c_char * (2 * self._size)).from_address(self._prod + self._page)
        ).cast("B")
        self._consumer_pos = ctypes.c_uint64.from_address(self._cons)
        self._producer_pos = ctypes.c_uint64.from_address(self._prod)

    @property
    def size(self) -> int:
        """The data area in bytes (the map's max_entries)."""
        return self._size

    def fileno(self) -> int:
        """The pollable fd: readable while records are waiting."""
        if self._fd < 0:
            raise BpfError("ring buffer is closed", errno.EBADF)
        return self._fd

    def pending(self) -> int:
        """Bytes between the consumer and the producer (committed or not)."""
        self.fileno()
        return int(self._producer_pos.value) - int(self._consumer_pos.value)

    def consume(self, budget: int) -> list[bytes]:
        """Copy out at most ``budget`` committed records and free their space.

        Stops early at a record still being written (BUSY). Discarded records
        are skipped and do not count against the budget.
        """
        self.fileno()
        cons = int(self._consumer_pos.value)
        prod = int(self._producer_pos.value)  # acquire (see module docstring)
        view, mask, header = self._view, self._mask, _HEADER.unpack_from
        assert view is not None
        out: list[bytes] = []
        while cons < prod and len(out) < budget:
            off = cons & mask
            (hdr,) = header(view, off)  # acquire: commit clears BUSY last
            if hdr & BUSY_BIT:
                break
            length = hdr & _LEN_MASK
            if not hdr & DISCARD_BIT:
                # Contiguous even across the end: the data area is mapped twice.
                out.append(view[off + HDR_SIZE : off + HDR_SIZE + length].tobytes())
            cons += (length + HDR_SIZE + 7) & ~7
        self._consumer_pos.value = cons  # release: the kernel may reuse the space
        return out

    def close(self) -> None:
        """Unmap and close the fd. Idempotent."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._prod:
            _munmap(self._prod, self._page + 2 * self._size)
            self._prod = 0
        if self._cons:
            _munmap(self._cons, self._page)
            self._cons = 0
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        self.fileno()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


# --- the fwd object's event maps ----------------------------------------------------


class _Configurable(Protocol):
    def set_initial_value(self, map_name: str, data: bytes) -> None: ...

    def set_max_entries(self, map_name: str, n: int) -> None: ...


class _Lookup(Protocol):
    @property
    def ncpus(self) -> int: ...

    def lookup(self, key: bytes) -> bytes | None: ...


def configure_events(
    obj: _Configurable,
    *,
    rate: int = abi.EVENT_RATE,
    burst: int = abi.EVENT_BURST,
    size: int = abi.EVENTS_SIZE,
) -> None:
    """Set the event budget (records/s and burst, per CPU) and ring size; before load."""
    if not 0 <= rate <= abi.EVENT_MAX_RATE:
        raise ValueError(f"event rate must be 0..{abi.EVENT_MAX_RATE}, got {rate}")
    if not 1 <= burst <= abi.EVENT_MAX_BURST:
        raise ValueError(f"event burst must be 1..{abi.EVENT_MAX_BURST}, got {burst}")
    if size < mmap.PAGESIZE or size & (size - 1):
        raise ValueError(f"ring buffer size must be a power of 2 >= {mmap.PAGESIZE}, got {size}")
    obj.set_initial_value(abi.EVENT_CONFIG_MAP, bytes(abi.EventConfig(rate=rate, burst=burst)))
    obj.set_max_entries("fwd_events", size)


def kernel_event_stats(stats_map: _Lookup) -> KernelEventStats:
    """Read ``fwd_event_stats`` and sum it over CPUs."""
    raw = stats_map.lookup(bytes(4))
    if raw is None:  # an array always has index 0; a fake may not
        return KernelEventStats()
    return sum_event_stats(raw, stats_map.ncpus)
