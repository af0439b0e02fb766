"""ClusterSync's settings, statistics and backoff (plain data; the actor is
fwd/actors/cluster_sync.py, which re-exports these names)."""

from __future__ import annotations

import importlib.metadata
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from fwd.cluster.layout import Layout


def fwd_version() -> str:
    import fwd

    version = getattr(fwd, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version("fwd")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class SyncConfig:
    """Settings of one ClusterSync (from ``fwd agent --etcd ... --node ... --label ...``)."""

    node: str
    labels: Mapping[str, str] = field(default_factory=dict)  # seeds labels/<node> if absent
    layout: Layout = field(default_factory=Layout)
    lease_ttl: int = 10
    backoff_min: float = 0.1
    backoff_max: float = 5.0
    reply_timeout: float = 10.0
    interfaces_poll: float = 5.0  # how often to look for attach-mode changes (with links)
    # A status whose only news is a higher synced_revision (e.g. another node was
    # relabelled) is written at most this often; a new policy, error or label at once.
    # Without it a burst of N label writes makes N agents write N statuses each.
    status_interval: float = 1.0
    version: str = field(default_factory=fwd_version)


@dataclass
class SyncStatistics:
    sessions: int = 0  # successful loads (1 + reconnects that reached etcd)
    failures: int = 0  # sessions that ended in an etcd error
    batches: int = 0
    applies: int = 0
    apply_errors: int = 0
    status_puts: int = 0
    leases: int = 0  # leases granted
    credential_reloads: int = 0  # sessions restarted on a renewed certificate
    synced_revision: int = 0


class Backoff:
    """Capped exponential backoff with full jitter between ``low`` and the cap."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high, self._next = low, high, low

    def reset(self) -> None:
        self._next = self.low

    def next(self) -> float:
        delay = random.uniform(self.low, self._next)
        self._next = min(self._next * 2, self.high)
        return delay
