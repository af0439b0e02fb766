"""BPF map handles: element and batch operations with sizes checked in Python.

Keys and values are ``bytes`` in the kernel's layout (build them with the
ctypes structs of :mod:`fwd.core.abi`). Sizes are checked before any syscall:
the kernel reads exactly ``key_size`` bytes from whatever pointer it gets, so
a short buffer would be an out-of-bounds read, not an error.

Per-CPU maps exchange values of ``ncpus * round_up(value_size, 8)`` bytes
(:attr:`Map.value_bytes`), one 8-byte-aligned slot per possible CPU.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fwd.kernel import libbpf
from fwd.kernel.handle import Handle
from fwd.errors import BpfError

if TYPE_CHECKING:
    from fwd.kernel.objects import BpfObject

# Batch calls a map type does not implement answer ENOTSUPP (or EOPNOTSUPP).
_NO_BATCH = frozenset({libbpf.ENOTSUPP, errno.EOPNOTSUPP})


class Map(Handle):
    """A BPF map: borrowed from a BpfObject, or opened from a pin (owns its fd)."""

    _kind = "map"

    def __init__(
        self,
        name: str,
        *,
        owner: BpfObject | None = None,
        ptr: int = 0,
        fd: int = -1,
        info: libbpf.MapInfo | None = None,
    ) -> None:
        super().__init__(name, owner=owner, fd=fd)
        self._ptr = ptr
        self._info = info  # for pinned maps; object maps ask libbpf
        self._sizes: tuple[int, int, int] | None = None  # (type, key, value) once fixed

    def _borrowed_fd(self) -> int:
        return int(libbpf.bpf_map__fd(self._ptr))

    @classmethod
    def from_pinned(cls, path: str | os.PathLike[str]) -> Map:
        """Open the map pinned at ``path``; the returned handle owns its fd."""
        p = os.fspath(path)
        fd, info = libbpf.obj_get_info(p, libbpf.MapInfo(), "map")
        m = cls(info.name.decode(errors="replace"), fd=fd, info=info)
        m._pin_path = p
        return m

    # --- shape -----------------------------------------------------------------

    def _shape(self) -> tuple[int, int, int]:
        if self._sizes is not None:
            self.ensure_open()  # still fail loudly after close
            return self._sizes
        if self._info is not None:
            self.ensure_open()
            shape = (
                int(self._info.type),
                int(self._info.key_size),
                int(self._info.value_size),
            )
        else:
            assert self._owner is not None
            self._owner._handle()
            p = self._ptr
            shape = (
                int(libbpf.bpf_map__type(p)),
                int(libbpf.bpf_map__key_size(p)),
                int(libbpf.bpf_map__value_size(p)),
            )
        # An object's maps keep their shape from load on; before that, don't cache.
        if self._info is not None or getattr(self._owner, "loaded", False):
            self._sizes = shape
        return shape

    @property
    def type(self) -> int:
        """The map type (``BPF_MAP_TYPE_*`` in :mod:`fwd.kernel.libbpf`)."""
        return self._shape()[0]

    @property
    def key_size(self) -> int:
        """Bytes per key."""
        return self._shape()[1]

    @property
    def value_size(self) -> int:
        """Bytes per value, as declared (per CPU, for per-CPU maps)."""
        return self._shape()[2]

    @property
    def max_entries(self) -> int:
        """Capacity, as set in the object or with ``BpfObject.set_max_entries``."""
        if self._info is not None:
            self.ensure_open()
            return int(self._info.max_entries)
        assert self._owner is not None
        self._owner._handle()
        return int(libbpf.bpf_map__max_entries(self._ptr))

    @property
    def map_flags(self) -> int:
        """``BPF_F_*`` creation flags (e.g. BPF_F_NO_PREALLOC)."""
        if self._info is not None:
            self.ensure_open()
            return int(self._info.map_flags)
        assert self._owner is not None
        self._owner._handle()
        return int(libbpf.bpf_map__map_flags(self._ptr))

    @property
    def id(self) -> int:
        """The kernel's map id."""
        return int(libbpf.obj_info(self.fd, libbpf.MapInfo(), self.label).id)

    @property
    def percpu(self) -> bool:
        """Whether values are per CPU."""
        return self.type in libbpf.PERCPU_MAP_TYPES

    @property
    def ncpus(self) -> int:
        """The number of possible CPUs (the slot count of per-CPU values)."""
        return libbpf.num_possible_cpus()

    @property
    def value_bytes(self) -> int:
        """Bytes of one value as lookup/update exchange it."""
        t, _, v = self._shape()
        if t in libbpf.PERCPU_MAP_TYPES:
            return libbpf.num_possible_cpus() * ((v + 7) & ~7)
        return v

    def _check_keys(self, keys: bytes, count: int, what: str) -> None:
        ks = self.key_size
        if len(keys) != ks * count:
            raise ValueError(
                f"{self.label}: {what} needs {count} x {ks} = {ks * count} key bytes, got {len(keys)}"
            )

    def _check_values(self, values: bytes, count: int, what: str) -> None:
        vs = self.value_bytes
        if len(values) != vs * count:
            raise ValueError(
                f"{self.label}: {what} needs {count} x {vs} = {vs * count} value bytes, "
                f"got {len(values)}"
            )

    # --- elements ----------------------------------------------------------------

    def lookup(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None."""
        self._check_keys(key, 1, "lookup")
        value = ctypes.create_string_buffer(self.value_bytes)
        ret = int(libbpf.bpf_map_lookup_elem(self.fd, key, value))
        if ret == -errno.ENOENT:
            return None
        libbpf.check(ret, f"bpf_map_lookup_elem({self.label})")
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = libbpf.BPF_ANY) -> None:
        """Store ``value`` under ``key`` (``flags``: BPF_ANY, BPF_NOEXIST, BPF_EXIST)."""
        self._check_keys(key, 1, "update")
        self._check_values(value, 1, "update")
        libbpf.check(
            int(libbpf.bpf_map_update_elem(self.fd, key, value, flags)),
            f"bpf_map_update_elem({self.label})",
        )

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False if it was not there."""
        self._check_keys(key, 1, "delete")
        ret = int(libbpf.bpf_map_delete_elem(self.fd, key))
        if ret == -errno.ENOENT:
            return False
        libbpf.check(ret, f"bpf_map_delete_elem({self.label})")
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key, via get_next_key (slow: prefer :meth:`lookup_batch`)."""
        ks = self.key_size
        nxt = ctypes.create_string_buffer(ks)
        prev: bytes | None = None
        while True:
            ret = int(libbpf.bpf_map_get_next_key(self.fd, prev, nxt))
            if ret == -errno.ENOENT:
                return
            libbpf.check(ret, f"bpf_map_get_next_key({self.label})")
            prev = nxt.raw
            yield prev

    # --- batches -----------------------------------------------------------------

    def update_batch(
        self, keys: bytes, values: bytes, count: int, flags: int = libbpf.BPF_ANY
    ) -> None:
        """Store ``count`` packed keys and values in one syscall (falls back to a loop
        for map types without batch support)."""
        self._check_keys(keys, count, "update_batch")
        self._check_values(values, count, "update_batch")
        if count == 0:
            return
        opts = libbpf.new_opts(libbpf.MapBatchOpts)
        opts.elem_flags = flags  # BPF_ANY/NOEXIST/EXIST apply per element
        n = ctypes.c_uint32(count)
        ret = int(
            libbpf.bpf_map_update_batch(self.fd, keys, values, ctypes.byref(n), opts)
        )
        if -ret in _NO_BATCH and n.value in (0, count):  # refused before any element
            ks, vs = self.key_size, self.value_bytes
            for i in range(count):
                self.update(
                    keys[i * ks : (i + 1) * ks], values[i * vs : (i + 1) * vs], flags
                )
            return
        libbpf.check(
            ret, f"bpf_map_update_batch({self.label}, {n.value} of {count} done)"
        )

    def delete_batch(self, keys: bytes, count: int) -> None:
        """Delete ``count`` packed keys in one syscall; a missing key is an error (ENOENT)."""
        self._check_keys(keys, count, "delete_batch")
        if count == 0:
            return
        opts = libbpf.new_opts(libbpf.MapBatchOpts)
        n = ctypes.c_uint32(count)
        ret = int(libbpf.bpf_map_delete_batch(self.fd, keys, ctypes.byref(n), opts))
        if -ret in _NO_BATCH and n.value in (0, count):  # refused before any element
            ks = self.key_size
            for i in range(count):
                key = keys[i * ks : (i + 1) * ks]
                libbpf.check(
                    int(libbpf.bpf_map_delete_elem(self.fd, key)),
                    f"bpf_map_delete_elem({self.label}, batch entry {i})",
                )
            return
        libbpf.check(
            ret, f"bpf_map_delete_batch({self.label}, {n.value} of {count} done)"
        )

    def lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value), read ``chunk`` entries per syscall.

        The batch cursor is opaque: a u32 bucket index for hash maps, a whole
        key for arrays and others. Both cursor buffers are ``max(key_size, 8)``
        bytes so neither kind can overrun them. ENOENT marks the last batch,
        which may still carry entries.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        ks, vs = self.key_size, self.value_bytes
        cursor = max(ks, 8)
        in_batch = ctypes.create_string_buffer(cursor)
        out_batch = ctypes.create_string_buffer(cursor)
        keys = ctypes.create_string_buffer(chunk * ks)
        values = ctypes.create_string_buffer(chunk * vs)
        opts = libbpf.new_opts(libbpf.MapBatchOpts)
        first = True
        while True:
            n = ctypes.c_uint32(chunk)
            ret = int(
                libbpf.bpf_map_lookup_batch(
                    self.fd,  # re-read each round: fails loudly if closed meanwhile
                    None if first else in_batch,
                    out_batch,
                    keys,
                    values,
                    ctypes.byref(n),
                    opts,
                )
            )
            got = n.value
            if ret == -errno.ENOSPC and got == 0:
                # A hash bucket holds more entries than chunk: retry bigger.
                chunk *= 2
                keys = ctypes.create_string_buffer(chunk * ks)
                values = ctypes.create_string_buffer(chunk * vs)
                continue
            if ret < 0 and ret != -errno.ENOENT:
                libbpf.check(ret, f"bpf_map_lookup_batch({self.label})")
            # Copy out before yielding: the buffers are reused by the next round.
            kraw, vraw = keys.raw[: got * ks], values.raw[: got * vs]
            for i in range(got):
                yield kraw[i * ks : (i + 1) * ks], vraw[i * vs : (i + 1) * vs]
            if ret == -errno.ENOENT:
                return
            ctypes.memmove(in_batch, out_batch, cursor)
            first = False

    def __repr__(self) -> str:
        return f"<Map {self._name!r}{' closed' if self.closed else ''}>"


def map_from_pinned(path: str | os.PathLike[str]) -> Map:
    """Open the map pinned at ``path`` (see :meth:`Map.from_pinned`)."""
    return Map.from_pinned(path)


__all__ = ["BpfError", "Map", "map_from_pinned"]
