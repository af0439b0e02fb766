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
from typing import Any, NoReturn, Self

import anyio

from fwd.cluster.credentials import TlsCredentials
from fwd.cluster.etcdtypes import (
    CHANNEL_OPTIONS, Compacted, CredentialsChanged, EtcdError, EtcdUnavailable, Event, KeyValue,
    LeaseExpired, PermissionDenied, RangeResult, TxnResult, WatchBatch, check_transport,
    parse_urls, prefix_end, split_urls,
)  # fmt: skip

# aetcd and grpc are imported lazily (in EtcdClient.connect) so `import fwd.cluster.etcd`
# costs nothing and local mode never needs them.


__all__ = [
    "Compacted", "CredentialsChanged", "EtcdClient", "EtcdError", "EtcdUnavailable", "Event",
    "KeyValue", "LeaseExpired", "PermissionDenied", "RangeResult", "TxnResult", "WatchBatch",
    "check_transport", "parse_urls", "prefix_end", "split_urls",
]  # fmt: skip


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        raw.key.decode(errors="replace"), bytes(raw.value), raw.mod_revision, raw.create_revision, raw.lease
    )


class EtcdClient:
    """One gRPC channel to one of ``urls`` (``failover`` moves to the next one).

    With ``https://`` URLs the channel is TLS with ``credentials`` (the CA etcd is
    verified with, and the client certificate that is this client's etcd user).
    When the credentials' files change, the next call builds a new channel from
    them; the old one is closed once its last call ended (closing a grpc.aio
    channel under a running call raises a bare CancelledError in that call).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        timeout: float = 5.0,
        credentials: TlsCredentials | None = None,
    ) -> None:
        self.scheme, self.endpoints = split_urls(urls)
        if self.scheme == "https" and credentials is None:
            raise EtcdError("https:// etcd URLs need TLS credentials (--etcd-ca, --etcd-cert, --etcd-key)")
        self.credentials = credentials if self.scheme == "https" else None
        self.timeout = timeout
        self._index = 0
        self._generation = 0
        self._channel: Any = None
        self._channel_version = 0  # the credentials' version the channel was built with
        self._active: dict[int, int] = {}  # id(channel) -> calls running on it
        self._retired: dict[int, Any] = {}  # stale channels closed when their last call ends
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

    def stale(self) -> bool:
        """Whether the credentials changed since the channel was built (checks the
        files at most every ``check_interval``)."""
        creds = self.credentials
        if creds is None:
            return False
        creds.refresh()
        return self._channel is not None and self._channel_version != creds.version

    async def wait_credentials_changed(self) -> None:
        """Return once the credentials' files hold a new valid identity (never without TLS)."""
        creds = self.credentials
        if creds is None:
            await anyio.sleep_forever()
            return
        while not self.stale():
            await anyio.sleep(creds.check_interval)

    def _connect(self) -> None:
        if self._channel is not None and self.stale():
            # New calls go to a new channel; the old one closes when its last call ends.
            old, self._channel = self._channel, None
            self._generation += 1
            self._retired[id(old)] = old
        if self._channel is not None:
            return
        from aetcd import (
            rpc,  # the lazy import: only cluster mode needs aetcd and grpcio
        )

        self._rpc = rpc
        if self.credentials is None:
            self._channel = rpc.insecure_channel(self.endpoint, options=CHANNEL_OPTIONS)
        else:
            self._channel_version = self.credentials.version
            self._channel = rpc.secure_channel(
                self.endpoint, self.credentials.grpc_credentials(), options=CHANNEL_OPTIONS
            )
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        self._auth = rpc.AuthStub(self._channel)

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """Count a call on the current channel; close a retired channel after its last call."""
        self._connect()
        key = id(self._channel)
        self._active[key] = self._active.get(key, 0) + 1
        try:
            yield
        finally:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]
            idle = [k for k in self._retired if k not in self._active]
            if idle:
                with anyio.CancelScope(shield=True):
                    for k in idle:
                        await self._retired.pop(k).close()

    async def failover(self, generation: int) -> None:
        """Reconnect to the next URL, unless someone already did since ``generation``
        (with one URL: only if the credentials changed, so a retry uses the new ones)."""
        if generation != self._generation:
            return
        if len(self.endpoints) < 2:
            if self.stale():
                self._connect()  # retires the old channel
            return
        self._generation += 1
        self._index = (self._index + 1) % len(self.endpoints)
        channel, self._channel = self._channel, None
        if channel is not None:
            with anyio.CancelScope(shield=True):
                await channel.close()

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        retired, self._retired = list(self._retired.values()), {}
        with anyio.CancelScope(shield=True):
            for ch in [*retired, channel]:
                if ch is not None:
                    await ch.close()

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
        if code is sc.PERMISSION_DENIED:
            return PermissionDenied(f"etcd {self.endpoint}: {what}: permission denied for {self.user()}")
        name = code.name if code is not None else type(e).__name__
        return EtcdError(f"etcd {self.endpoint}: {what}: {name}: {details}")

    def user(self) -> str:
        """The etcd user this client acts as (its certificate's CN), for messages."""
        if self.credentials is None:
            return "an unauthenticated client"
        cn = self.credentials.identity.common_name
        return f"etcd user {cn!r}" if cn else "a client without a certificate"

    async def _unary(self, method: str, stub: str, request: Any) -> Any:
        async with self._call():
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

    async def get_ranges(self, ranges: Sequence[tuple[str, str]]) -> RangeResult:
        """Several ranges (``end`` "" = the one key) read at one revision (a read-only
        transaction: etcd checks the read permission of each range on its own)."""
        self._connect()
        rpc = self._rpc
        ops = [
            rpc.RequestOp(request_range=rpc.RangeRequest(key=start.encode(), range_end=end.encode()))
            for start, end in ranges
        ]
        resp = await self._unary("Txn", "_kv", rpc.TxnRequest(success=ops))
        kvs = tuple(_kv(kv) for r in resp.responses for kv in r.response_range.kvs)
        return RangeResult(resp.header.revision, kvs)

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

    # --- auth (fwd cluster init: fwd/cluster/access.py) ----------------------------

    @property
    def rpc(self) -> Any:
        """aetcd's generated message module (for building auth requests)."""
        self._connect()
        return self._rpc

    async def auth(self, method: str, request: Any) -> Any:
        """One call of etcd's Auth service (``UserAdd``, ``RoleGrantPermission``, ...)."""
        return await self._unary(method, "_auth", request)

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
        async with self._call():
            await self._keep_alive(lease, ttl)

    async def _keep_alive(self, lease: int, ttl: int) -> NoReturn:
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
        async with self.watch_ranges([(start, end)], start_revision) as batches:
            yield batches

    @contextlib.asynccontextmanager
    async def watch_ranges(
        self, ranges: Sequence[tuple[str, str]], start_revision: int
    ) -> AsyncIterator[AsyncIterator[WatchBatch]]:
        """Watch several ranges (``end`` "" = the one key) from ``start_revision``, all
        on one stream: one watcher per range, their batches interleaved as etcd sends
        them (in revision order while the watchers are synced, which they are when
        ``start_revision`` is one past a read's revision and nothing was compacted)."""
        async with self._call():
            rpc = self._rpc
            call = self._watch.Watch()
            try:
                try:
                    for start, end in ranges:
                        create = rpc.WatchCreateRequest(
                            key=start.encode(), range_end=end.encode(), start_revision=start_revision
                        )
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
                if "permission denied" in resp.cancel_reason:
                    raise PermissionDenied(f"etcd {self.endpoint}: Watch: permission denied for {self.user()}")
                raise EtcdUnavailable(f"etcd {self.endpoint}: watch canceled: {resp.cancel_reason}")
            if resp.created and not resp.events:
                continue  # its header revision says nothing about events still to come
            yield WatchBatch(
                resp.header.revision,
                tuple(Event(ev.type != put, _kv(ev.kv)) for ev in resp.events),
            )
