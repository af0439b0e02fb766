"""The one seam between fwd and etcd: a small async client over aetcd's gRPC stubs.

Why aetcd (docs/cluster.md): it ships etcd's v3 API compiled for grpcio's
asyncio API, without the gogoproto / google.api annotations etcd's own
rpc.proto drags in, so we do not generate or own that code. We call its stubs
(``aetcd.rpc``) directly rather than its ``Client`` because we need what
``Client`` drops: the response header revision of each watch batch and of each
transaction, watch batches as etcd sends them (one revision's events together),
and one long-lived lease keep-alive stream instead of a new stream per refresh.

Everything fwd needs is here, typed, with errors translated into the project's
hierarchy at this seam (``EtcdUnavailable`` means: back off and retry). Tests and
the benchmark can share one ``EtcdClient`` (one HTTP/2 connection) between many
ClusterSync actors; each still has its own watch stream and lease.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Self
from urllib.parse import urlsplit

import anyio

from fwd.errors import FwdError

# aetcd and grpc are imported lazily (in EtcdClient.connect) so `import fwd.cluster.etcd`
# costs nothing and local mode never needs them.


class EtcdError(FwdError):
    """etcd refused a request (not a connectivity problem)."""


class EtcdUnavailable(EtcdError):
    """etcd could not be reached or the stream broke: back off, reconnect, reload."""


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


def parse_urls(urls: str | Sequence[str]) -> list[tuple[str, int]]:
    """``http://h:p,http://h2:p2`` (or a list) as (host, port) pairs; plain http only."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"http://{item}")
        if parts.scheme != "http" or not parts.hostname:
            raise EtcdError(f"etcd URL {item!r}: only http://HOST:PORT is supported")
        out.append((parts.hostname, parts.port or 2379))
    if not out:
        raise EtcdError("no etcd URL given")
    return out


def prefix_end(prefix: str) -> str:
    """The end of the key range holding every key that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        raw.key.decode(errors="replace"), bytes(raw.value), raw.mod_revision, raw.create_revision, raw.lease
    )


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


class EtcdClient:
    """One gRPC channel to one of ``urls`` (``failover`` moves to the next one)."""

    def __init__(self, urls: str | Sequence[str], *, timeout: float = 5.0) -> None:
        self.endpoints = parse_urls(urls)
        self.timeout = timeout
        self._index = 0
        self._generation = 0
        self._channel: Any = None
        self._kv: Any = None
        self._lease: Any = None
        self._watch: Any = None
        self._rpc: Any = None

    @property
    def generation(self) -> int:
        """Bumped by every failover: callers pass the one they saw to ``failover``."""
        return self._generation

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[self._index]
        return f"{host}:{port}"

    def _connect(self) -> None:
        if self._channel is not None:
            return
        from aetcd import (
            rpc,  # the lazy import: only cluster mode needs aetcd and grpcio
        )

        self._rpc = rpc
        self._channel = rpc.insecure_channel(self.endpoint, options=CHANNEL_OPTIONS)
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)

    async def failover(self, generation: int) -> None:
        """Reconnect to the next URL, unless someone already did since ``generation``."""
        if generation != self._generation or len(self.endpoints) < 2:
            return
        self._generation += 1
        self._index = (self._index + 1) % len(self.endpoints)
        channel, self._channel = self._channel, None
        if channel is not None:
            with anyio.CancelScope(shield=True):
                await channel.close()

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with anyio.CancelScope(shield=True):
                await channel.close()

    async def __aenter__(self) -> Self:
        self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- errors ----------------------------------------------------------------

    def _translate(self, e: Exception, what: str) -> EtcdError:
        code = e.code() if hasattr(e, "code") else None
        details = e.details() if hasattr(e, "details") else str(e)
        sc = self._rpc.StatusCode
        if code in (sc.UNAVAILABLE, sc.DEADLINE_EXCEEDED, sc.CANCELLED, sc.UNKNOWN, sc.INTERNAL):
            return EtcdUnavailable(f"etcd {self.endpoint}: {what}: {code.name}: {details}")
        if code is sc.OUT_OF_RANGE and "compacted" in (details or ""):
            return Compacted(0)
        name = code.name if code is not None else type(e).__name__
        return EtcdError(f"etcd {self.endpoint}: {what}: {name}: {details}")

    async def _unary(self, method: str, stub: str, request: Any) -> Any:
        self._connect()
        try:
            return await getattr(getattr(self, stub), method)(request, timeout=self.timeout)
        except self._rpc.AioRpcError as e:
            raise self._translate(e, method) from None

    # --- KV ------------------------------------------------------------------------

    async def get_range(self, start: str, end: str) -> RangeResult:
        """Every key in ``[start, end)`` and the revision it was read at (linearizable)."""
        self._connect()
        resp = await self._unary("Range", "_kv", self._rpc.RangeRequest(key=start.encode(), range_end=end.encode()))
        return RangeResult(resp.header.revision, tuple(_kv(kv) for kv in resp.kvs))

    async def newest_mod_revision(self, start: str, end: str) -> int:
        """The highest mod revision of any key in ``[start, end)`` (0 if none): one key,
        no values, sorted by etcd."""
        self._connect()
        rpc = self._rpc
        request = rpc.RangeRequest(
            key=start.encode(), range_end=end.encode(), limit=1, keys_only=True,
            sort_order=rpc.RangeRequest.DESCEND, sort_target=rpc.RangeRequest.MOD,
        )
        resp = await self._unary("Range", "_kv", request)
        return int(resp.kvs[0].mod_revision) if resp.kvs else 0

    async def get_prefix(self, prefix: str) -> RangeResult:
        return await self.get_range(prefix, prefix_end(prefix))

    async def get(self, key: str) -> tuple[KeyValue | None, int]:
        """The key (None if absent) and the store revision."""
        self._connect()
        resp = await self._unary("Range", "_kv", self._rpc.RangeRequest(key=key.encode()))
        return (_kv(resp.kvs[0]) if resp.kvs else None), resp.header.revision

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Unconditional put; the revision of the write."""
        self._connect()
        resp = await self._unary("Put", "_kv", self._rpc.PutRequest(key=key.encode(), value=value, lease=lease))
        return int(resp.header.revision)

    async def _txn(self, key: str, mod_revision: int | None, op: Any) -> TxnResult:
        rpc = self._rpc
        compare = []
        if mod_revision is not None:
            compare.append(
                rpc.Compare(
                    key=key.encode(),
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.MOD,
                    mod_revision=mod_revision,
                )
            )
        request = rpc.TxnRequest(
            compare=compare,
            success=[op],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key.encode()))],
        )
        resp = await self._unary("Txn", "_kv", request)
        if resp.succeeded:
            return TxnResult(True, resp.header.revision)
        kvs = resp.responses[0].response_range.kvs
        return TxnResult(False, resp.header.revision, _kv(kvs[0]) if kvs else None)

    async def put_if(self, key: str, value: bytes, *, mod_revision: int | None, lease: int = 0) -> TxnResult:
        """Put unless the key's mod revision differs from ``mod_revision``
        (0: the key must not exist; None: no check)."""
        self._connect()
        op = self._rpc.RequestOp(request_put=self._rpc.PutRequest(key=key.encode(), value=value, lease=lease))
        return await self._txn(key, mod_revision, op)

    async def delete_if(self, key: str, *, mod_revision: int | None) -> TxnResult:
        """Delete under the same check as ``put_if``; deleting an absent key succeeds
        (check ``mod_revision`` to know it existed)."""
        self._connect()
        op = self._rpc.RequestOp(request_delete_range=self._rpc.DeleteRangeRequest(key=key.encode()))
        return await self._txn(key, mod_revision, op)

    # --- leases --------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        self._connect()
        resp = await self._unary("LeaseGrant", "_lease", self._rpc.LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise EtcdError(f"lease grant: {resp.error}")
        return int(resp.ID)

    async def revoke_lease(self, lease: int) -> None:
        self._connect()
        try:
            await self._unary("LeaseRevoke", "_lease", self._rpc.LeaseRevokeRequest(ID=lease))
        except EtcdError as e:
            if "not found" not in str(e):
                raise

    async def lease_ttl(self, lease: int) -> int:
        """Seconds the lease has left; -1 if it does not exist (expired or revoked)."""
        self._connect()
        resp = await self._unary("LeaseTimeToLive", "_lease", self._rpc.LeaseTimeToLiveRequest(ID=lease))
        return int(resp.TTL)

    async def keep_alive(self, lease: int, ttl: int) -> NoReturn:
        """Refresh ``lease`` every ttl/3 s over one stream until cancelled.

        Raises LeaseExpired when etcd says the lease is gone, EtcdUnavailable when
        the stream breaks or a refresh gets no answer within the client timeout.
        """
        self._connect()
        call = self._lease.LeaseKeepAlive()
        try:
            while True:
                try:
                    await call.write(self._rpc.LeaseKeepAliveRequest(ID=lease))
                    with anyio.fail_after(self.timeout):
                        resp = await call.read()
                except TimeoutError:
                    raise EtcdUnavailable(f"etcd {self.endpoint}: lease keep-alive timed out") from None
                except self._rpc.AioRpcError as e:
                    raise self._translate(e, "LeaseKeepAlive") from None
                if resp is self._grpc_eof():
                    raise EtcdUnavailable(f"etcd {self.endpoint}: lease keep-alive stream ended")
                if resp.TTL <= 0:
                    raise LeaseExpired(f"lease {lease:x} expired")
                await anyio.sleep(max(ttl / 3.0, 0.1))
        finally:
            call.cancel()

    def _grpc_eof(self) -> Any:
        from grpc import aio

        return aio.EOF

    # --- watch ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watch(self, start: str, end: str, start_revision: int) -> AsyncIterator[AsyncIterator[WatchBatch]]:
        """Watch ``[start, end)`` from ``start_revision`` (inclusive), one stream of its own.

        Yields an iterator of batches, each one watch response with its header
        revision. Raises Compacted if ``start_revision`` is compacted away,
        EtcdUnavailable if the stream breaks.
        """
        self._connect()
        rpc = self._rpc
        call = self._watch.Watch()
        create = rpc.WatchCreateRequest(key=start.encode(), range_end=end.encode(), start_revision=start_revision)
        try:
            try:
                await call.write(rpc.WatchRequest(create_request=create))
            except rpc.AioRpcError as e:
                raise self._translate(e, "Watch") from None
            yield self._batches(call)
        finally:
            call.cancel()

    async def _batches(self, call: Any) -> AsyncIterator[WatchBatch]:
        eof = self._grpc_eof()
        put = self._rpc.Event.PUT
        while True:
            try:
                resp = await call.read()
            except self._rpc.AioRpcError as e:
                raise self._translate(e, "Watch") from None
            if resp is eof:
                raise EtcdUnavailable(f"etcd {self.endpoint}: watch stream ended")
            if resp.compact_revision:
                raise Compacted(resp.compact_revision)
            if resp.canceled:
                raise EtcdUnavailable(f"etcd {self.endpoint}: watch canceled: {resp.cancel_reason}")
            if resp.created and not resp.events:
                continue  # its header revision says nothing about events still to come
            yield WatchBatch(
                resp.header.revision,
                tuple(Event(ev.type != put, _kv(ev.kv)) for ev in resp.events),
            )
