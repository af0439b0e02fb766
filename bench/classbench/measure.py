"""Per-packet cost of XDP programs over a trace, and the checks against the reference.

:func:`over_trace` runs every frame of a trace through each program with
BPF_PROG_TEST_RUN, pinned to one CPU:

* **hot**: ``repeat`` repetitions of the same frame per call (the kernel's own
  average per repetition), ``trials`` passes over the trace; a packet's cost is
  the median of its trials. Mean, p99 and worst are over packets.
* **cold**: one more pass with ``repeat=1``, in trace order, so each run follows
  a different packet (what traffic over many flows looks like); only the mean
  is reported (one run is too short to rank packets by).

The programs take turns pass by pass (bare, one rule, the set; then again), so
background load on the shared VM spreads over all of them.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bench.dataplane.kernel import pinned_to


class _Result(Protocol):
    @property
    def retval(self) -> int: ...

    @property
    def duration_ns(self) -> int: ...


class Runnable(Protocol):
    """What :func:`over_trace` needs of a program (``fwd.kernel.objects.Program``)."""

    @property
    def name(self) -> str: ...

    def test_run(self, data: bytes, *, repeat: int = 1, ingress_ifindex: int = 0,
                 data_out_size: int | None = None) -> _Result: ...


@dataclass
class PerPacket:
    """One program over one trace."""

    name: str
    hot: list[float] = field(default_factory=list)     # per packet: median over trials, ns
    cold: list[float] = field(default_factory=list)    # per packet: one run, ns
    retvals: list[int] = field(default_factory=list)
    runs_per_packet: int = 0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.hot)

    @property
    def worst(self) -> float:
        return max(self.hot)

    @property
    def p99(self) -> float:
        s = sorted(self.hot)
        return s[min(len(s) - 1, int(0.99 * len(s)))]

    @property
    def cold_mean(self) -> float:
        return statistics.fmean(self.cold)


def over_trace(progs: Sequence[Runnable], frames: Sequence[bytes], *, repeat: int,
               trials: int, cpu: int) -> list[PerPacket]:
    """Every program over every frame (see the module docstring); raises if a verdict
    changes between runs of the same frame."""
    out = [PerPacket(p.name, runs_per_packet=repeat * trials + 1) for p in progs]
    samples: list[list[list[float]]] = [[[] for _ in frames] for _ in progs]
    with pinned_to(cpu):
        for trial in range(trials):
            for pi, prog in enumerate(progs):
                per = samples[pi]
                rets = out[pi].retvals
                for i, fr in enumerate(frames):
                    r = prog.test_run(fr, repeat=repeat, data_out_size=0)
                    per[i].append(float(r.duration_ns))
                    if trial == 0:
                        rets.append(r.retval)
                    elif rets[i] != r.retval:
                        raise RuntimeError(f"{prog.name}: packet {i}: verdict {rets[i]} then "
                                           f"{r.retval} for the same frame")
        for pi, prog in enumerate(progs):
            cold = out[pi].cold
            for i, fr in enumerate(frames):
                r = prog.test_run(fr, repeat=1, data_out_size=0)
                cold.append(float(r.duration_ns))
                if out[pi].retvals[i] != r.retval:
                    raise RuntimeError(f"{prog.name}: packet {i}: cold run verdict changed")
    for pi in range(len(progs)):
        out[pi].hot = [statistics.median(s) for s in samples[pi]]
    return out


@dataclass
class Check:
    """Kernel against reference: verdicts per packet, packets per rule counter."""

    verdict_mismatches: list[tuple[int, int, int]]   # (packet, expected, got)
    counter_mismatches: list[tuple[str, int, int]]   # (rule id or "default", expected, got)

    @property
    def ok(self) -> bool:
        return not self.verdict_mismatches and not self.counter_mismatches


def check(expected_actions: Sequence[int], got: Sequence[int],
          histogram: Mapping[str | None, int], runs_per_packet: int,
          counted: Mapping[str | None, int]) -> Check:
    """Compare verdicts packet by packet, and every rule's counter increase (``counted``,
    every rule of the policy and None for the default slot) with the expected histogram."""
    verdicts = [(i, e, g) for i, (e, g) in enumerate(zip(expected_actions, got)) if e != g]
    if len(expected_actions) != len(got):
        verdicts.append((-1, len(expected_actions), len(got)))
    counters = []
    for rule in sorted(set(histogram) | set(counted), key=lambda r: (r is not None, r or "")):
        want, have = histogram.get(rule, 0) * runs_per_packet, counted.get(rule, 0)
        if want != have:
            counters.append((rule or "default", want, have))
    return Check(verdicts, counters)
