"""The I/O shell over the XDP program's maps: write a generation, flip, read counters.

The Datapath actor is the only caller (sole writer of BPF maps). Everything
here is synchronous; each call is a handful of bpf(2) syscalls.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from fwd.bpf import abi
from fwd.policy.compiler import CompiledPolicy, compile_policy
from fwd.policy.model import Policy

_U32 = struct.Struct("=I")
_COUNTER = struct.Struct("=QQQQ")
_KEY_SIZE = ctypes.sizeof(abi.Key)
assert _COUNTER.size == ctypes.sizeof(abi.Counter)


class MapLike(Protocol):
    """What the dataplane needs of fwd.bpf.objects.Map (a fake can stand in)."""

    @property
    def value_size(self) -> int: ...

    def lookup(self, key: bytes) -> bytes | None: ...

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None: ...

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None: ...

    def delete_batch(self, keys: bytes, count: int) -> None: ...

    def lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[bytes, bytes]]: ...


@dataclass(frozen=True)
class SlotCounters:
    packets: int
    bytes: int
    would_drop_packets: int
    would_drop_bytes: int


class Dataplane:
    """Writes compiled policies into the maps of one loaded fwd XDP object."""

    def __init__(self, maps: Mapping[str, MapLike], ncpus: int, barrier: "Barrier") -> None:
        self._live = maps["fwd_live"]
        self._gen = maps["fwd_gen"]
        self._tuples = maps["fwd_tuples"]
        self._rules = maps["fwd_rules"]
        self._counters = maps["fwd_counters"]
        self._ncpus = ncpus
        self._barrier = barrier
        # Keys written per generation, so a retired generation can be deleted
        # exactly, without walking the hash map.
        self._written: dict[int, tuple[bytes, int]] = {0: (b"", 0), 1: (b"", 0)}

    def live_generation(self) -> int:
        raw = self._live.lookup(_U32.pack(0))
        if raw is None:
            return 0
        return int(abi.Live.from_buffer_copy(raw).gen)

    def compile(
        self,
        policy: Policy,
        revision: int,
        *,
        slots: Mapping[str, int],
        ifindexes: Mapping[str, int],
    ) -> CompiledPolicy:
        """Compile ``policy`` for the inactive generation (pure; raises on a bad policy)."""
        return compile_policy(
            policy,
            gen=1 - self.live_generation(),
            slots=slots,
            ifindexes=ifindexes,
            revision=revision,
        )

    def install(
        self, compiled: CompiledPolicy, revision: int, fresh_slots: Iterable[int] = ()
    ) -> None:
        """Write ``compiled`` into its (inactive) generation and make it live atomically.

        ``fresh_slots`` are counter slots newly given to rule ids: they are
        zeroed first, so a rule never inherits a removed rule's packets.

        Order matters: entries and tuples first, the generation's config next,
        the live word last. A packet reads the live word once, so it sees either
        the old generation (untouched until after the flip and a barrier) or
        the new one, complete.
        """
        gen = compiled.gen
        if gen == self.live_generation():
            raise ValueError(f"generation {gen} is live; compile into the other one")
        self._clear(gen)
        self.zero_slots(fresh_slots)
        n = len(compiled.tuples)
        if n:
            idx = b"".join(_U32.pack(gen * abi.MAX_TUPLES + i) for i in range(n))
            self._tuples.update_batch(idx, b"".join(bytes(t) for t in compiled.tuples), n)
        if compiled.count:
            self._rules.update_batch(compiled.keys, compiled.values, compiled.count)
        self._written[gen] = (compiled.keys, compiled.count)
        config = abi.GenConfig.from_buffer_copy(bytes(compiled.config))
        config.revision = revision
        self._gen.update(_U32.pack(gen), bytes(config))
        self._live.update(_U32.pack(0), bytes(abi.Live(gen=gen, revision=revision)))
        # Wait until no program still runs on the old generation, then retire it.
        self._barrier.wait()
        self._clear(1 - gen)

    def _clear(self, gen: int) -> None:
        keys, count = self._written[gen]
        if count:
            self._rules.delete_batch(keys, count)
        self._written[gen] = (b"", 0)

    def zero_slots(self, slots: Iterable[int]) -> None:
        """Reset per-CPU counters of slots handed to new rule ids."""
        zero = bytes(self._counters.value_size) * self._ncpus
        for slot in slots:
            self._counters.update(_U32.pack(slot), zero)

    def read_counters(self, slots: Iterable[int]) -> dict[int, SlotCounters]:
        """Sum the per-CPU counters of ``slots``."""
        stride = (self._counters.value_size + 7) // 8 * 8
        out: dict[int, SlotCounters] = {}
        for slot in slots:
            raw = self._counters.lookup(_U32.pack(slot))
            sums = [0, 0, 0, 0]
            if raw is not None:
                for cpu in range(self._ncpus):
                    vals = _COUNTER.unpack_from(raw, cpu * stride)
                    for i in range(4):
                        sums[i] += vals[i]
            out[slot] = SlotCounters(*sums)
        return out


    def read_counters_batch(self, slots: Collection[int]) -> dict[int, SlotCounters]:
        """Sum the per-CPU counters of ``slots`` with batch lookups (for the metrics collector).

        Read-only and safe from any thread (bpf(2) syscalls only). The counter
        array is walked in key order from slot 0 and the walk stops at the
        highest slot wanted: slots are handed out from the bottom, so that is
        close to the number of rules, in a few syscalls instead of one per slot.
        A slot the walk did not return reads as zero.
        """
        wanted = frozenset(slots)
        if not wanted:
            return {}
        last = max(wanted)
        zero = SlotCounters(0, 0, 0, 0)
        out = dict.fromkeys(wanted, zero)
        stride = (self._counters.value_size + 7) // 8 * 8
        for key, raw in self._counters.lookup_batch(chunk=min(last + 1, 4096)):
            slot = _U32.unpack(key)[0]
            if slot in wanted:
                p = b = wp = wb = 0
                for cpu in range(self._ncpus):
                    cp, cb, cwp, cwb = _COUNTER.unpack_from(raw, cpu * stride)
                    p, b, wp, wb = p + cp, b + cb, wp + cwp, wb + cwb
                out[slot] = SlotCounters(p, b, wp, wb)
            if slot >= last:
                break
        return out


class Barrier(Protocol):
    """Returns once every XDP program run that started before the call has ended."""

    def wait(self) -> None: ...
