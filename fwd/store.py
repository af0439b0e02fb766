"""Desired state: the applied policy, its revision history and rule counter slots.

One small interface (``Store``) with a SQLite implementation in the agent's
state directory; cluster mode will add an etcd one. Calls are synchronous and
short (one transaction); the Datapath runs them in a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fwd.errors import FwdError
from fwd.policy.model import Policy, policy_from_dict, policy_to_dict

SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    revision INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL,
    policy TEXT NOT NULL,
    slots TEXT NOT NULL
);
"""


class StoreError(FwdError):
    """The state directory or its database cannot be used."""


@dataclass(frozen=True)
class StoredPolicy:
    revision: int
    policy: Policy
    slots: dict[str, int]
    applied_at: float


class Store(Protocol):
    def latest(self) -> StoredPolicy | None: ...

    def save(self, revision: int, policy: Policy, slots: dict[str, int]) -> None: ...

    def get(self, revision: int) -> StoredPolicy | None: ...

    def history(self, offset: int, limit: int) -> tuple[list[StoredPolicy], int]: ...

    def close(self) -> None: ...


class SqliteStore:
    """Revisions in ``<state_dir>/fwd.db``; the newest row is the desired policy."""

    def __init__(self, state_dir: str | Path) -> None:
        path = Path(state_dir)
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            # check_same_thread=False: the Datapath calls from worker threads,
            # one call at a time (it is the only user).
            self._db = sqlite3.connect(path / "fwd.db", check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"state directory {path}: {e}") from e
        self.path = path / "fwd.db"

    def latest(self) -> StoredPolicy | None:
        row = self._db.execute(
            "SELECT revision, applied_at, policy, slots FROM revisions "
            "ORDER BY revision DESC LIMIT 1"
        ).fetchone()
        return None if row is None else self._decode(row)

    def get(self, revision: int) -> StoredPolicy | None:
        row = self._db.execute(
            "SELECT revision, applied_at, policy, slots FROM revisions WHERE revision = ?",
            (revision,),
        ).fetchone()
        return None if row is None else self._decode(row)

    def history(self, offset: int, limit: int) -> tuple[list[StoredPolicy], int]:
        """A page of revisions, newest first, and how many there are in all."""
        total = int(self._db.execute("SELECT count(*) FROM revisions").fetchone()[0])
        rows = self._db.execute(
            "SELECT revision, applied_at, policy, slots FROM revisions "
            "ORDER BY revision DESC LIMIT ? OFFSET ?",
            (limit, offset),
        ).fetchall()
        return [self._decode(r) for r in rows], total

    def _decode(self, row: tuple[object, ...]) -> StoredPolicy:
        revision, applied_at, policy, slots = row
        try:
            return StoredPolicy(
                revision=int(revision),  # type: ignore[call-overload]
                policy=policy_from_dict(json.loads(str(policy))),
                slots={str(k): int(v) for k, v in json.loads(str(slots)).items()},
                applied_at=float(applied_at),  # type: ignore[arg-type]
            )
        except (ValueError, FwdError) as e:
            raise StoreError(f"{self.path}: revision {revision} is unreadable: {e}") from e

    def save(self, revision: int, policy: Policy, slots: dict[str, int]) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO revisions (revision, applied_at, policy, slots) VALUES (?, ?, ?, ?)",
                (revision, time.time(), json.dumps(policy_to_dict(policy)), json.dumps(slots)),
            )

    def close(self) -> None:
        self._db.close()


class MemoryStore:
    """A Store that keeps nothing across processes (tests, benchmarks)."""

    def __init__(self) -> None:
        self._revisions: dict[int, StoredPolicy] = {}

    def latest(self) -> StoredPolicy | None:
        return self._revisions[max(self._revisions)] if self._revisions else None

    def get(self, revision: int) -> StoredPolicy | None:
        return self._revisions.get(revision)

    def history(self, offset: int, limit: int) -> tuple[list[StoredPolicy], int]:
        newest = sorted(self._revisions, reverse=True)[offset : offset + limit]
        return [self._revisions[r] for r in newest], len(self._revisions)

    def save(self, revision: int, policy: Policy, slots: dict[str, int]) -> None:
        self._revisions[revision] = StoredPolicy(revision, policy, dict(slots), time.time())

    def close(self) -> None:
        pass
