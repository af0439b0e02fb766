"""The plain parts of the etcd seam (fwd/cluster/etcd.py): errors, records, URLs.

No grpc or aetcd here; ``fwd.cluster.etcd`` re-exports every name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from fwd.errors import FwdError


class EtcdError(FwdError):
    """etcd refused a request (not a connectivity problem)."""


class EtcdUnavailable(EtcdError):
    """etcd could not be reached or the stream broke: back off, reconnect, reload."""


class PermissionDenied(EtcdError):
    """etcd's auth refused the request: this identity's roles do not allow it."""


class CredentialsChanged(EtcdUnavailable):
    """The TLS files changed: end the session and reconnect with the new identity."""


class Compacted(EtcdError):
    """The revision a watch asked for is compacted away: reload with a get."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted up to {revision}")
        self.revision = revision


class LeaseExpired(EtcdError):
    """The lease is gone (expired or revoked); keys attached to it were deleted."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Event:
    """A put (``deleted`` False) or a delete of ``kv.key`` at ``kv.mod_revision``."""

    deleted: bool
    kv: KeyValue


@dataclass(frozen=True)
class WatchBatch:
    """One watch response: every event up to ``revision`` in the range was delivered."""

    revision: int
    events: tuple[Event, ...]


@dataclass(frozen=True)
class RangeResult:
    revision: int  # the store's revision the range was read at
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True)
class TxnResult:
    """A compare-and-swap: ``revision`` of the write, or, when it failed, the key now."""

    succeeded: bool
    revision: int
    current: KeyValue | None = None


def split_urls(urls: str | Sequence[str]) -> tuple[str, list[tuple[str, int]]]:
    """``https://h:p,https://h2:p2`` (or a list): the scheme they share and (host, port)
    pairs. A URL without a scheme is http."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = []
    schemes = set()
    for item in items:
        item = item.strip()
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"http://{item}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EtcdError(f"etcd URL {item!r}: expected https://HOST:PORT (or http:// with --etcd-insecure)")
        schemes.add(parts.scheme)
        out.append((parts.hostname, parts.port or 2379))
    if not out:
        raise EtcdError("no etcd URL given")
    if len(schemes) > 1:
        raise EtcdError("etcd URLs: all https:// or all http://, not a mix")
    return schemes.pop(), out


def parse_urls(urls: str | Sequence[str]) -> list[tuple[str, int]]:
    """The (host, port) pairs of ``urls`` (http or https)."""
    return split_urls(urls)[1]


def check_transport(urls: str | Sequence[str], *, tls: bool, insecure: bool) -> str:
    """Refuse what would send a firewall's control plane in clear text or half-configured.

    ``https://`` needs TLS settings (at least the CA, normally a client certificate);
    ``http://`` is refused unless ``insecure`` (``--etcd-insecure``) and then takes no
    TLS settings. Returns the scheme.
    """
    scheme, _ = split_urls(urls)
    if scheme == "http":
        if not insecure:
            raise EtcdError(
                "--etcd: http:// is plain text: anyone on the path can rewrite every node's "
                "firewall. Use https:// with --etcd-ca/--etcd-cert/--etcd-key, or pass "
                "--etcd-insecure to accept it (tests, a lab)"
            )
        if tls:
            raise EtcdError("--etcd-ca/--etcd-cert/--etcd-key: need https:// etcd URLs, not http://")
    elif insecure:
        raise EtcdError("--etcd-insecure: only with http:// URLs (these are https://)")
    return scheme


def prefix_end(prefix: str) -> str:
    """The end of the key range holding every key that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# gRPC channel settings: reconnect quickly (grpc's default backoff grows to 120 s),
# and notice a silently dead peer. etcd refuses pings more often than every 5 s.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 128 * 1024 * 1024),
)
