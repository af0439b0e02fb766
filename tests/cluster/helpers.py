"""Running ClusterSync actors with recording datapaths against a real etcd."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from fwd.cluster.etcd import EtcdClient
from fwd.testing import FakeDatapath
from fwd.cluster.layout import Layout, encode_labels, encode_policy_record
from fwd.actors.cluster_sync import ClusterSync, SyncConfig
from fwd.messages import DatapathCommand
from fwd.policy.model import policy_from_dict

LAYOUT = Layout()


@dataclass
class Node:
    sync: ClusterSync
    datapath: FakeDatapath
    scope: anyio.CancelScope


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` until it holds; fail (not hang) after ``timeout``."""
    with anyio.move_on_after(timeout):
        while not cond():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@asynccontextmanager
async def nodes_running(etcd: EtcdClient) -> AsyncIterator[Callable[..., Any]]:
    """Yields ``start(node, labels, **config)`` -> Node; everything stops at the end."""
    async with anyio.create_task_group() as tg:

        async def start(node: str, labels: Mapping[str, str] | None = None, **config: Any) -> Node:
            tx, rx = anyio.create_memory_object_stream[DatapathCommand](8)
            datapath = FakeDatapath(rx)
            sync = ClusterSync(etcd, tx, SyncConfig(node=node, labels=dict(labels or {}), **config))
            scope = anyio.CancelScope()

            async def run_both(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                with scope:
                    async with anyio.create_task_group() as inner:
                        await inner.start(datapath.run)
                        await inner.start(sync.run)
                        task_status.started()

            await tg.start(run_both)
            return Node(sync, datapath, scope)

        yield start
        tg.cancel_scope.cancel()


async def put_policy(etcd: EtcdClient, name: str, selector: str, priority: int, policy: dict[str, Any]) -> int:
    result = await etcd.put_if(
        LAYOUT.policy_key(name), encode_policy_record(selector, priority, policy_from_dict(policy)), mod_revision=None
    )
    return result.revision


async def put_labels(etcd: EtcdClient, node: str, labels: Mapping[str, str]) -> int:
    return await etcd.put(LAYOUT.labels_key(node), encode_labels(labels))


def drop_rule(rule_id: str, src: str = "198.18.0.0/24") -> dict[str, Any]:
    return {"rules": [{"id": rule_id, "action": "drop", "src": [src]}]}
