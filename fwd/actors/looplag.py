"""Event-loop lag: how late the agent's event loop wakes a task that asked to sleep.

Every actor shares one event loop, so anything that holds it (a long decode
batch, a big compile, the GC) delays every other actor. :class:`LoopLagMonitor`
measures that directly: a task sleeps ``interval`` seconds and records how much
later than asked it woke (the lag), in a histogram and a running maximum. The
issue's bar ("the event loop never stalls > 50 ms under an event flood") is
read off these, as Prometheus metrics (``fwd_event_loop_lag_seconds``).

A late wake-up has two possible causes: the loop was busy running other
callbacks (the agent's own doing), or its thread was not running at all
(descheduled on a busy machine, or waiting for the GIL). The monitor tells
them apart with the thread's CPU time over each interval: if the thread ran
``cpu`` seconds in an interval of ``interval + lag``, it was off-CPU for
``interval + lag - cpu``, so at least ``cpu - interval`` of the lag was the
loop's own work, and at most ``cpu``. The worst lower bound is exported
beside the lag (``fwd_event_loop_lag_own_max_seconds``); adding ``interval``
to it bounds the loop's own share of every lag measured so far.

Cost: one wake-up per ``interval`` (100/s at the default 10 ms), two clock
reads, a bisect and a few additions each: negligible next to the work it watches.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

DEFAULT_INTERVAL = 0.010
# Upper bounds (seconds) of the histogram buckets; the last, implicit one is +Inf.
# Fine below 50 ms, where the bar is, coarse above it.
BUCKETS: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.010, 0.020, 0.030, 0.050, 0.075, 0.100, 0.250, 0.500, 1.0, 2.5,
)


@dataclass(frozen=True)
class LoopLagStatistics:
    """Lag samples so far: per-bucket counts (not cumulative; last is +Inf), sum and max."""

    buckets: tuple[float, ...]  # upper bounds, without +Inf
    counts: tuple[int, ...]  # len(buckets) + 1
    sum: float
    max: float
    interval: float
    own_max: float = 0.0  # the worst lag the loop's own work accounts for (a lower bound)

    @property
    def samples(self) -> int:
        """How many wake-ups were measured."""
        return sum(self.counts)


class LagHistogram:
    """The pure core: records lag samples into fixed buckets, keeps sum and max."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("buckets must be strictly increasing")
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        self._max = 0.0
        self._own_max = 0.0

    def record(self, lag: float, own: float = 0.0) -> None:
        """Add one sample (seconds; negative lag, a timer firing early, counts as 0).

        ``own``: how much of it, at least, the loop spent running its own work.
        """
        lag = max(lag, 0.0)
        own = min(max(own, 0.0), lag)
        self._own_max = max(self._own_max, own)
        # bisect_left: a sample equal to a bound belongs to that bucket (le="bound").
        self._counts[bisect.bisect_left(self._bounds, lag)] += 1
        self._sum += lag
        self._max = max(self._max, lag)

    def statistics(self, interval: float = 0.0) -> LoopLagStatistics:
        """A snapshot of the samples so far."""
        return LoopLagStatistics(
            self._bounds, tuple(self._counts), self._sum, self._max, interval, self._own_max
        )


class LoopLagMonitor:
    """Sleeps ``interval`` in a loop on the event loop and records how late each wake-up was."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.interval = interval
        self._hist = LagHistogram()

    def statistics(self) -> LoopLagStatistics:
        """Every lag sample since the monitor started."""
        return self._hist.statistics(self.interval)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Measure until cancelled."""
        task_status.started()
        clock, cpu = time.monotonic, time.thread_time  # the loop's thread: this one
        interval = self.interval
        while True:
            start, cpu0 = clock(), cpu()
            await anyio.sleep(interval)
            self._hist.record(clock() - start - interval, cpu() - cpu0 - interval)
