"""Short load test (CI): concurrent clients apply, read and subscribe while traffic flows.

bench/load.py is the long variant (50 clients, 60 s). Memory is only printed here.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from tests.e2e.loadgen import LoadLab, final_state, rss_kib, run_load
from tests.netns import Netns, bpffs, netns  # noqa: F401 - fixture

pytestmark = pytest.mark.root

CLIENTS = 10
SECONDS = 5.0


def test_concurrent_clients_lose_no_apply(netns: Netns, tmp_path: Path) -> None:  # noqa: F811
    pins = bpffs() / f"{netns.prefix}-load-{os.getpid()}"
    netns.pin_dirs.append(pins)
    pins.mkdir()
    lab = LoadLab.make(netns, tmp_path, pins)
    try:
        assert lab.agent.proc is not None
        pid = lab.agent.proc.pid
        rss_start = rss_kib(pid)
        lab.flood(SECONDS + 30)
        report = anyio.run(run_load, lab.agent.socket, CLIENTS, SECONDS)
        flood = lab.stop_flood()
        history, revision, policy = anyio.run(final_state, lab.agent.socket)
        rss_end = rss_kib(pid)
        print(f"\n{report.summary()}\nflood sent {flood}\n"
              f"agent RSS {rss_start / 1024:.1f} MiB at start, {rss_end / 1024:.1f} MiB at end")
        assert report.problems(history, revision, policy) == []
        assert report.applied, "no apply succeeded"
        assert report.reads > 0 and report.event_batches > 0
    finally:
        lab.stop_flood()
        assert lab.agent.stop() == 0, lab.agent.log()[-3000:]
