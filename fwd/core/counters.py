"""A rule's counters as the kernel keeps them per CPU, summed: what reads of them carry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SlotCounters:
    packets: int
    bytes: int
    would_drop_packets: int
    would_drop_bytes: int
