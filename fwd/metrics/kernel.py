"""Kernel counters the collector reads at scrape time, straight from BPF maps.

Pure decoding (per-CPU values summed) plus the batch walk of ``fwd_if_stats``.
Reading a map is a bpf(2) syscall on an fd: safe from the scrape thread while
the Datapath writes other maps. The map is optional: an object built before
the kernel counted per interface has no ``fwd_if_stats``, and the collector
then exposes no per-interface verdict counts instead of failing.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from fwd.core import abi

IF_STATS_MAP = "fwd_if_stats"
_U32 = struct.Struct("=I")
_IF_STATS = struct.Struct("=6Q")
assert _IF_STATS.size == ctypes.sizeof(abi.IfStats)

# Verdict label values by FWD_VERDICT_* index (bpf/fwd.h).
VERDICTS = {
    abi.VERDICT_PASS: "pass",
    abi.VERDICT_DROP: "drop",
    abi.VERDICT_WOULD_DROP: "would_drop",
}


class BatchReadable(Protocol):
    """What reading needs of fwd.kernel.maps.Map (a fake can stand in)."""

    @property
    def value_size(self) -> int: ...

    def lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[bytes, bytes]]: ...


@dataclass(frozen=True)
class IfCounters:
    """struct fwd_if_stats summed over CPUs: packets and bytes by verdict index."""

    packets: tuple[int, int, int]
    bytes: tuple[int, int, int]


def sum_if_stats(raw: bytes, ncpus: int, value_size: int = _IF_STATS.size) -> IfCounters:
    """Sum one per-CPU value of fwd_if_stats (``ncpus`` slots, 8-byte aligned)."""
    stride = (value_size + 7) // 8 * 8
    sums = [0] * 6
    for cpu in range(ncpus):
        for i, v in enumerate(_IF_STATS.unpack_from(raw, cpu * stride)):
            sums[i] += v
    return IfCounters((sums[0], sums[1], sums[2]), (sums[3], sums[4], sums[5]))


def read_if_stats(stats_map: BatchReadable, ncpus: int) -> dict[int, IfCounters]:
    """Every interface's verdict counters, keyed by ifindex, in batches."""
    size = stats_map.value_size
    return {
        _U32.unpack(key)[0]: sum_if_stats(raw, ncpus, size)
        for key, raw in stats_map.lookup_batch(chunk=256)
    }
