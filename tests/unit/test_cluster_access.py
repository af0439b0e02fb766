"""fwd.cluster.access: the roles of cluster mode (pure part; apply_plan runs against a
real etcd in tests/cluster/test_trust.py)."""

from __future__ import annotations

import pytest

from fwd.cluster.access import ADMIN_ROLE, READER_ROLE, Grant, node_role, plan
from fwd.cluster.layout import Layout
from fwd.errors import PolicyError


def test_a_node_may_read_policies_and_its_labels_and_write_only_its_status() -> None:
    p = plan(Layout("/x/"), ["n0", "n1"], ["ops"], ["mon"])
    assert p.roles[node_role("n0")] == (
        Grant("/x/policies/", "/x/policies0", "read"),
        Grant("/x/labels/n0", "", "read"),
        Grant("/x/status/n0", "", "readwrite"),
    )
    assert p.roles[ADMIN_ROLE] == (Grant("/x/", "/x0", "readwrite"),)
    assert p.roles[READER_ROLE] == (Grant("/x/", "/x0", "read"),)
    assert p.users == {"ops": (ADMIN_ROLE,), "mon": (READER_ROLE,), "n0": (node_role("n0"),),
                       "n1": (node_role("n1"),)}  # fmt: skip
    # No node role reaches outside its own keys or writes anything but its status.
    for node in ("n0", "n1"):
        for g in p.roles[node_role(node)]:
            assert g.perm == "read" or g.key == f"/x/status/{node}" and g.range_end == ""


@pytest.mark.parametrize(
    ("nodes", "admins", "readers", "why"),
    [
        (["root"], ["fwd-admin"], [], "--node: 'root' is etcd's superuser"),
        (["fwd-admin"], ["fwd-admin"], [], "--node: 'fwd-admin' is already an admin"),
        (["n0"], ["a"], ["a"], "--reader: 'a' is already an admin"),
        (["bad/name"], ["fwd-admin"], [], "--node: invalid node name"),
        ([], ["root"], [], "--admin: 'root' is etcd's superuser"),
    ],
)
def test_bad_names_are_refused_naming_the_option(
    nodes: list[str], admins: list[str], readers: list[str], why: str
) -> None:
    with pytest.raises(PolicyError, match=why.replace("(", r"\(")):
        plan(Layout(), nodes, admins, readers)
