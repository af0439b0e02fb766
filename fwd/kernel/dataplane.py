"""The I/O shell over the XDP program's maps: write a change, flip, read counters.

The Datapath actor is the only caller (sole writer of BPF maps). Everything
here is synchronous; each call is a handful of bpf(2) syscalls.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Protocol

from fwd.core import abi
from fwd.core.counters import SlotCounters
from fwd.core.transaction import TornCommit
from fwd.policy.adopt import KernelView
from fwd.policy.compiler import ABSENT, Change
from fwd.policy.engine import Commit
from fwd.policy.setkeys import SET_KEY_SIZE, for_generation

_GEN_BYTE = 6  # the generation byte of a fwd_sets key's tag (fwd.policy.setkeys)

_U32 = struct.Struct("=I")
_COUNTER = struct.Struct("=QQQQ")
assert _COUNTER.size == ctypes.sizeof(abi.Counter)


class MapLike(Protocol):
    """What the dataplane needs of fwd.kernel.objects.Map (a fake can stand in)."""

    @property
    def value_size(self) -> int: ...

    def lookup(self, key: bytes) -> bytes | None: ...

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None: ...

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None: ...

    def delete_batch(self, keys: bytes, count: int) -> None: ...

    def delete(self, key: bytes) -> bool: ...

    def lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[bytes, bytes]]: ...


class Dataplane:
    """Writes changes into the maps of one loaded fwd XDP object, one generation flip each."""

    def __init__(self, maps: Mapping[str, MapLike], ncpus: int, barrier: "Barrier") -> None:
        self._live = maps["fwd_live"]
        self._gen = maps["fwd_gen"]
        self._tuples = maps["fwd_tuples"]
        self._rules = maps["fwd_rules"]
        self._sets = maps["fwd_sets"]
        self._counters = maps["fwd_counters"]
        self._ncpus = ncpus
        self._barrier = barrier

    def live_generation(self) -> int:
        raw = self._live.lookup(_U32.pack(0))
        if raw is None:
            return 0
        return int(abi.Live.from_buffer_copy(raw).gen)

    def commit(self, c: Commit, alongside: Callable[[], None] | None = None) -> None:
        """Make ``c`` live atomically (bpf/README.md "Updates").

        (b) write the inactive generation: every changed entry whole, with the
        live half unchanged and the inactive half new; set elements tagged
        with the inactive generation; its tuples and config. (c) flip the live
        word. (d) wait for programs still on the old generation. (e) copy the
        change into the old half, delete entries absent from both and the old
        generation's removed set elements. Packets read the live word once, so
        each sees one generation, complete.

        ``alongside`` (the Datapath's store write) runs in another thread while
        the entries are written and must finish before the flip: the batch write
        is one syscall that releases the GIL, so a large apply saves most of the
        shorter of the two. Its failure undoes (b) like any other.
        """
        live = self.live_generation()
        new = 1 - live
        self.zero_slots(c.fresh_slots)
        try:
            if alongside is None:
                self._write_entries(c.changes, live, new)
            else:
                with ThreadPoolExecutor(max_workers=1) as pool:
                    side = pool.submit(alongside)
                    try:
                        self._write_entries(c.changes, live, new)
                    finally:
                        wait([side])  # never flip (or undo) while it still runs
                    side.result()  # its error, if any
            self._write_sets(c.set_add, c.set_remove, new)
            n = len(c.tuples)
            if n > abi.MAX_TUPLES:
                raise ValueError(f"{n} tuples exceed {abi.MAX_TUPLES}")
            if n:
                idx = b"".join(_U32.pack(new * abi.MAX_TUPLES + i) for i in range(n))
                self._tuples.update_batch(idx, b"".join(bytes(t) for t in c.tuples), n)
            self._gen.update(_U32.pack(new), bytes(self._config(c)))
            self._live.update(_U32.pack(0), bytes(abi.Live(gen=new, revision=c.revision)))
        except BaseException:
            # Nothing is live yet, but the inactive half of the entries and the
            # inactive generation's set elements hold part of ``c``: the next commit
            # writes only its own diff, so they would go live with it. Put them back.
            self._undo_inactive(c, new)
            raise
        try:
            self._barrier.wait()
            self.settle(c)
        except BaseException as exc:
            # ``c`` is live but the retired half still holds the old verdicts: the
            # next flip would bring them back. Only a full reconciliation repairs
            # that (a restarted agent adopts the kernel and aligns both halves).
            raise TornCommit(c.revision) from exc

    def settle(self, c: Commit) -> None:
        """(e) of ``commit``, once ``c`` is live: bring the retired generation level
        with it. Idempotent: a commit torn in (e) is finished by calling it again."""
        self._settle(c.changes)
        self._write_sets(c.set_add, c.set_remove, 1 - self.live_generation())

    def _undo_inactive(self, c: Commit, new: int) -> None:
        """Make the inactive generation equal the live one again after a failed (b).

        An error path: the failure may have struck anywhere in (b), so what it
        created is deleted key by key, a key it never reached being no error.
        """
        back = [(key, before) for key, before, _ in c.changes if before is not None]
        if back:
            keys = b"".join(key for key, _ in back)
            self._rules.update_batch(keys, b"".join(b + b for _, b in back), len(back))
        for key, before, _ in c.changes:
            if before is None:  # created by the failed commit: absent before, so again
                self._rules.delete(key)
        self._write_sets(c.set_remove, b"", new)  # elements it removed come back
        tagged = for_generation(c.set_add, new)
        for i in range(0, len(tagged), SET_KEY_SIZE):
            self._sets.delete(tagged[i : i + SET_KEY_SIZE])

    @staticmethod
    def _config(c: Commit) -> abi.GenConfig:
        """The fwd_gen value of the generation ``c`` makes live."""
        config = abi.GenConfig(
            ntuples=len(c.tuples), default_action=c.default_action, flags=c.flags,
            revision=c.revision,
        )  # fmt: skip
        if len(c.set_refs) > abi.MAX_SET_REFS:
            raise ValueError(f"{len(c.set_refs)} set lookups exceed {abi.MAX_SET_REFS}")
        config.nsets = len(c.set_refs)
        for i, (set_id, direction) in enumerate(c.set_refs):
            config.set_ids[i], config.set_dirs[i] = set_id, direction
        return config

    # --- adoption (a restarted agent over the previous agent's maps) -----------------

    def read_kernel(self) -> KernelView:
        """Everything the policy maps hold now: the "before" of the first commit."""
        raw = self._live.lookup(_U32.pack(0))
        live_word = abi.Live.from_buffer_copy(raw) if raw is not None else abi.Live()
        live = int(live_word.gen) & 1
        half = len(ABSENT)
        entries: dict[bytes, tuple[bytes, bytes]] = {}
        for key, value in self._rules.lookup_batch():
            halves = (value[:half], value[half : 2 * half])
            entries[key] = (halves[live], halves[1 - live])
        sets: tuple[set[bytes], set[bytes]] = (set(), set())
        for key, _ in self._sets.lookup_batch():  # the kernel's generic batch: ~1.4M keys/s
            gen = key[_GEN_BYTE]
            if gen in (0, 1):  # kept as generation-0 keys, as Commit.set_add holds them
                sets[gen].add(key[:_GEN_BYTE] + b"\0" + key[_GEN_BYTE + 1 :])
        config = self._gen.lookup(_U32.pack(live)) or b""
        ntuples = abi.GenConfig.from_buffer_copy(config).ntuples if config else 0
        tuples = []
        for i in range(min(int(ntuples), abi.MAX_TUPLES)):
            t = self._tuples.lookup(_U32.pack(live * abi.MAX_TUPLES + i))
            tuples.append(t or b"")
        return KernelView(
            live=live, revision=int(live_word.revision), entries=entries,
            sets=frozenset(sets[live]), sets_other=frozenset(sets[1 - live]),
            config=config, tuples=tuple(tuples),
        )  # fmt: skip

    def unchanged(self, c: Commit, view: KernelView) -> bool:
        """Whether the kernel already is what ``c`` would make it (no commit needed)."""
        return (
            not c.changes
            and not c.set_add
            and not c.set_remove
            and c.revision == view.revision
            and bytes(self._config(c)) == view.config
            and tuple(bytes(t) for t in c.tuples) == view.tuples
        )

    def align_inactive_sets(self, view: KernelView) -> None:
        """Make the inactive generation's set elements equal the live ones'.

        Only the generation packets do not read is written. Afterwards a
        commit's set changes, computed against the live generation, are right
        for both generations (an apply cut short may have left them apart).
        """
        add = b"".join(sorted(view.sets - view.sets_other))
        remove = b"".join(sorted(view.sets_other - view.sets))
        self._write_sets(add, remove, 1 - view.live)

    def _write_entries(self, changes: Sequence[Change], live: int, new: int) -> None:
        if not changes:
            return
        # v[live] keeps the verdict before, v[new] gets the one after.
        if new == 1:
            values = [(b or ABSENT) + (a or ABSENT) for _, b, a in changes]
        else:
            values = [(a or ABSENT) + (b or ABSENT) for _, b, a in changes]
        keys = b"".join([key for key, _, _ in changes])
        self._rules.update_batch(keys, b"".join(values), len(values))

    def _settle(self, changes: Sequence[Change]) -> None:
        keys = [key for key, _, after in changes if after is not None]
        values = [after + after for _, _, after in changes if after is not None]
        gone = [key for key, _, after in changes if after is None]
        if keys:
            self._rules.update_batch(b"".join(keys), b"".join(values), len(keys))
        if gone:
            self._rules.delete_batch(b"".join(gone), len(gone))

    def _write_sets(self, add: bytes, remove: bytes, gen: int) -> None:
        if add:
            n = len(add) // SET_KEY_SIZE
            self._sets.update_batch(for_generation(add, gen), b"\x01" * n, n)
        if remove:
            n = len(remove) // SET_KEY_SIZE
            self._sets.delete_batch(for_generation(remove, gen), n)

    def zero_slots(self, slots: Iterable[int]) -> None:
        """Reset per-CPU counters of slots handed to new rule ids."""
        # One batch: a 100,000-rule apply hands out up to 100,000 fresh slots, and
        # one syscall per slot cost ~0.7 s.
        keys = b"".join(_U32.pack(slot) for slot in sorted(set(slots)))
        n = len(keys) // _U32.size
        if n:
            zero = bytes(self._counters.value_size) * self._ncpus
            self._counters.update_batch(keys, zero * n, n)

    def _sum_cpus(self, raw: bytes | None) -> SlotCounters:
        """One slot's per-CPU counter values summed (None: an unread slot, zero)."""
        p = b = wp = wb = 0
        if raw is not None:
            stride = (self._counters.value_size + 7) // 8 * 8
            for cpu in range(self._ncpus):
                cp, cb, cwp, cwb = _COUNTER.unpack_from(raw, cpu * stride)
                p, b, wp, wb = p + cp, b + cb, wp + cwp, wb + cwb
        return SlotCounters(p, b, wp, wb)

    def read_counters(self, slots: Iterable[int]) -> dict[int, SlotCounters]:
        """Sum the per-CPU counters of ``slots``, one lookup each (for a few slots)."""
        return {slot: self._sum_cpus(self._counters.lookup(_U32.pack(slot))) for slot in slots}


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
        out = dict.fromkeys(wanted, self._sum_cpus(None))
        for key, raw in self._counters.lookup_batch(chunk=min(last + 1, 4096)):
            slot = _U32.unpack(key)[0]
            if slot in wanted:
                out[slot] = self._sum_cpus(raw)
            if slot >= last:
                break
        return out


class Barrier(Protocol):
    """Returns once every XDP program run that started before the call has ended."""

    def wait(self) -> None: ...
