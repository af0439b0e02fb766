"""``fwd cluster status`` on a quiet, converged cluster: LAG 0 on every node (real etcd).

Status writes (each node's own record, on its lease) move etcd's revision, but no agent
watches them; lag counts from the newest change under labels/ and policies/, which is
what the agents sync (docs/cluster.md, "Lag").
"""

from __future__ import annotations

import anyio
import pytest

from fwd.actors.cluster_admin import ClusterAdmin
from fwd.cluster.etcd import EtcdClient
from fwd.messages import ClusterView
from tests.cluster.helpers import LAYOUT, drop_rule, nodes_running, put_labels, put_policy, wait_until
from tests.etcd import EtcdServer


async def quiet_view(admin: ClusterAdmin, nodes: int, settle: float = 1.5) -> ClusterView:
    """The status once every node is live and nothing was written for ``settle`` seconds
    (status writes whose only news is a synced revision are debounced to 1 s)."""
    with anyio.fail_after(30):
        while True:
            view: ClusterView = await admin.read_status()
            if sum(n.live for n in view.nodes) == nodes:
                await anyio.sleep(settle)
                again: ClusterView = await admin.read_status()
                if again.revision == view.revision:
                    return again
            await anyio.sleep(0.1)


@pytest.mark.asyncio
async def test_a_quiet_converged_cluster_has_no_lag(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url) as etcd, nodes_running(etcd) as start:
        admin = ClusterAdmin(etcd, LAYOUT)
        nodes = [await start(f"n{i}", {"role": "edge" if i % 2 else "core"}) for i in range(3)]
        rev = await put_policy(etcd, "edge", "role=edge", 10, drop_rule("block"))
        await put_labels(etcd, "n0", {"role": "edge"})  # a relabel: every node sees it
        last = await put_policy(etcd, "core", "role=core", 20, drop_rule("other", "198.18.1.0/24"))
        await wait_until(lambda: all(n.sync.state.synced_revision >= last for n in nodes),
                         what="all synced")  # fmt: skip
        view = await quiet_view(admin, 3)
        assert view.policy_revision == last > rev
        assert {n.node: n.lag for n in view.nodes} == {"n0": 0, "n1": 0, "n2": 0}
        # The store's revision moved on with the nodes' status writes: measured against
        # it, as before, some node would show a lag on this quiet cluster.
        assert view.revision > view.policy_revision
        assert any(view.revision - n.synced_revision > 0 for n in view.nodes)
