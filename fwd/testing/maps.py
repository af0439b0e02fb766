"""In-memory BPF maps for the Dataplane, so a change's whole sequence runs without a kernel.

``FakeMaps`` hands out a :class:`FakeMap` (a dict of bytes to bytes) for any
map name the Dataplane asks for. ``fail_after(n)`` lets n writes succeed and
makes the next one raise ``BpfError`` (ENOSPC), once, as a full map or a
failing syscall would (the repair that follows writes freely): the tests put
a failure at every write of a commit in turn.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator

from fwd.core import abi
from fwd.errors import BpfError


class FakeMap:
    """A hash map of fixed-size values: what fwd.kernel.dataplane.MapLike needs."""

    def __init__(self, name: str, value_size: int, budget: list[int | None]) -> None:
        self.name = name
        self._value_size = value_size
        self.data: dict[bytes, bytes] = {}
        self._budget = budget  # shared by every map of one FakeMaps: [writes left or None]

    @property
    def value_size(self) -> int:
        return self._value_size

    def _write(self, what: str) -> None:
        left = self._budget[0]
        if left is None:
            return
        if left <= 0:
            self._budget[0] = None  # once: what follows (the undo) writes freely
            raise BpfError(f"{what} {self.name}", errno.ENOSPC)
        self._budget[0] = left - 1

    def lookup(self, key: bytes) -> bytes | None:
        return self.data.get(bytes(key))

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self._write("update")
        self.data[bytes(key)] = bytes(value)

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        self._write("update_batch")
        ks, vs = len(keys) // count, len(values) // count
        for i in range(count):
            self.data[keys[i * ks : (i + 1) * ks]] = values[i * vs : (i + 1) * vs]

    def delete_batch(self, keys: bytes, count: int) -> None:
        self._write("delete_batch")
        ks = len(keys) // count
        for i in range(count):
            self.data.pop(keys[i * ks : (i + 1) * ks], None)

    def delete(self, key: bytes) -> bool:
        self._write("delete")
        return self.data.pop(bytes(key), None) is not None

    def lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[bytes, bytes]]:
        yield from sorted(self.data.items())


class FakeMaps(dict[str, FakeMap]):
    """Every map a Dataplane asks for, created empty on first use."""

    def __init__(self) -> None:
        super().__init__()
        self._budget: list[int | None] = [None]

    def __missing__(self, name: str) -> FakeMap:
        self[name] = FakeMap(name, ctypes.sizeof(abi.Counter), self._budget)
        return self[name]

    def fail_after(self, writes: int | None) -> None:
        """Let ``writes`` more writes succeed, then fail one (None: never fail)."""
        self._budget[0] = writes

    @property
    def writes_left(self) -> int | None:
        return self._budget[0]


class FakeBarrier:
    """An RCU barrier with no programs running; ``fail`` makes the next wait raise."""

    def __init__(self) -> None:
        self.fail: BaseException | None = None
        self.waits = 0

    def wait(self) -> None:
        self.waits += 1
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
