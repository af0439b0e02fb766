"""The few etcd operations the API needs, on top of aetcd (imported lazily).

Transactions are built from etcd's own request messages (``aetcd.rpc``) rather
than aetcd's helpers because we need each response's header revision: the
revision of a write is what ``fwd policy apply`` prints and ``fwd cluster
wait`` waits for, and a read of two prefixes must happen at one revision.

Every call is bounded by ``timeout``; a failure to reach etcd becomes
``ClusterUnavailable`` (UNAVAILABLE at the API) and the next call tries the
next endpoint, so an agent given several endpoints fails over between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from fwd.errors import FwdError

if TYPE_CHECKING:
    import aetcd

KeyValue = tuple[bytes, bytes, int]  # key, value, mod_revision


class ClusterUnavailable(FwdError):
    """etcd could not be reached (or did not answer in time)."""


def parse_endpoint(url: str) -> tuple[str, int]:
    """``http://HOST:PORT`` (or ``HOST:PORT``) -> (host, port); ValueError naming it."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--etcd: expected http://HOST:PORT, not {url!r}")
    try:
        port = parts.port or 2379
    except ValueError:
        raise ValueError(f"--etcd: bad port in {url!r}") from None
    return parts.hostname, port


def key_name(key: bytes) -> str:
    """The last path element of a key (``/fwd/policies/web`` -> ``web``)."""
    return key.decode(errors="replace").rsplit("/", 1)[-1]


def range_end(prefix: bytes) -> bytes:
    """The range end that makes a range read cover every key under ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _reason(error: BaseException) -> str:
    details = getattr(error, "details", None)
    if callable(details):  # a grpc error: its details say what failed
        return str(details())
    return str(error) or type(error).__name__


class EtcdOps:
    """One lazily opened aetcd client for ``endpoints``, keys under ``prefix``."""

    def __init__(self, endpoints: tuple[str, ...], prefix: str = "/fwd/", timeout: float = 5.0):
        self._endpoints = [parse_endpoint(e) for e in endpoints]
        if not self._endpoints:
            raise ValueError("--etcd: no endpoint given")
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._timeout = timeout
        self._next = 0
        self._client: aetcd.Client | None = None

    def key(self, kind: str, name: str) -> bytes:
        """``<prefix><kind>/<name>`` (name "" gives the kind's prefix)."""
        return f"{self.prefix}{kind}/{name}".encode()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await client.close()

    async def _call(self, make: Any) -> Any:
        """Run ``make(client)`` with a deadline; map failures to ClusterUnavailable."""
        import aetcd  # lazily: local mode never needs grpcio

        if self._client is None:
            host, port = self._endpoints[self._next % len(self._endpoints)]
            self._client = aetcd.Client(host=host, port=port, timeout=int(self._timeout) or 1)
        client = self._client
        try:
            with anyio.fail_after(self._timeout):
                return await make(client)
        except (TimeoutError, aetcd.ClientError, aetcd.rpc.AioRpcError, OSError) as e:
            # Drop this connection; the next call tries the next endpoint.
            self._next += 1
            await self.close()
            host, port = self._endpoints[(self._next - 1) % len(self._endpoints)]
            raise ClusterUnavailable(f"etcd at {host}:{port} is unreachable: {_reason(e)}") from None

    async def _txn(self, compare: list[Any], success: list[Any], failure: list[Any]) -> Any:
        from aetcd import rpc

        async def go(client: aetcd.Client) -> Any:
            await client.connect()
            assert client.kvstub is not None
            request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
            return await client.kvstub.Txn(request, timeout=self._timeout)

        return await self._call(go)

    @staticmethod
    def _range(key: bytes, prefix: bool = False) -> Any:
        from aetcd import rpc

        end = range_end(key) if prefix else b""
        return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=end))

    @staticmethod
    def _compare_mod(key: bytes, expect: int) -> Any:
        """The key's mod revision is ``expect``; 0 means the key does not exist."""
        from aetcd import rpc

        if expect == 0:
            return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION,
                               version=0)  # fmt: skip
        return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                           mod_revision=expect)  # fmt: skip

    async def get(self, key: bytes) -> tuple[bytes | None, int]:
        """(value, mod_revision) of ``key``; (None, 0) when it does not exist."""
        response = await self._txn([], [self._range(key)], [])
        kvs = response.responses[0].response_range.kvs
        return (bytes(kvs[0].value), int(kvs[0].mod_revision)) if kvs else (None, 0)

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """(revision, every key under ``prefix``) in one read."""
        response = await self._txn([], [self._range(prefix, prefix=True)], [])
        return int(response.header.revision), self._kvs(response.responses[0])

    async def get_two_prefixes(
        self, first: bytes, second: bytes
    ) -> tuple[int, list[KeyValue], list[KeyValue]]:
        """Both prefixes read at the same revision (one transaction)."""
        response = await self._txn(
            [], [self._range(first, prefix=True), self._range(second, prefix=True)], []
        )
        a, b = response.responses
        return int(response.header.revision), self._kvs(a), self._kvs(b)

    @staticmethod
    def _kvs(op: Any) -> list[KeyValue]:
        return [(bytes(kv.key), bytes(kv.value), int(kv.mod_revision))
                for kv in op.response_range.kvs]  # fmt: skip

    async def put_if(
        self, key: bytes, value: bytes, expect: int | None
    ) -> tuple[bool, int, int]:
        """Write ``key`` if its mod revision is ``expect`` (None: always).

        Returns (written, revision of the write, the key's mod revision when
        not written: 0 if it does not exist).
        """
        from aetcd import rpc

        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))
        compare = [] if expect is None else [self._compare_mod(key, expect)]
        response = await self._txn(compare, [put], [self._range(key)])
        return self._outcome(response)

    async def delete_if(self, key: bytes, expect: int | None) -> tuple[bool, int, int]:
        """Delete ``key`` if it exists and (given ``expect``) its mod revision is
        ``expect``. Returns like ``put_if``: (deleted, revision, mod revision)."""
        from aetcd import rpc

        delete = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
        exists = rpc.Compare(key=key, result=rpc.Compare.GREATER, target=rpc.Compare.VERSION,
                             version=0)  # fmt: skip
        compare = [exists] + ([] if expect is None else [self._compare_mod(key, expect)])
        response = await self._txn(compare, [delete], [self._range(key)])
        return self._outcome(response)

    def _outcome(self, response: Any) -> tuple[bool, int, int]:
        revision = int(response.header.revision)
        if response.succeeded:
            return True, revision, 0
        kvs = response.responses[0].response_range.kvs
        return False, revision, int(kvs[0].mod_revision) if kvs else 0
