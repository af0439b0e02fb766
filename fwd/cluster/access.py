"""Who may do what in etcd: the roles of cluster mode, and ``fwd cluster init``.

etcd runs with ``--client-cert-auth``; a client certificate's CN is its etcd user.

| user (certificate CN) | role | may |
| --- | --- | --- |
| ``<node>`` (one per agent) | ``fwd-node-<node>`` | read ``policies/``, read ``labels/<node>``, read and write ``status/<node>`` (and grant, keep alive and revoke its own leases) |
| ``fwd-admin`` (``--admin``) | ``fwd-admin`` | read and write everything under the prefix |
| ``--reader`` users | ``fwd-reader`` | read everything under the prefix (monitoring, ``fwd cluster status``) |
| ``root`` | ``root`` (etcd's) | everything, including auth; only for ``fwd cluster init`` |

A node never writes a policy or a label: labels select policies, so a node
that could set its own labels could choose a laxer firewall. ``plan`` is pure
(the wanted roles and users); ``apply_plan`` makes etcd match it, idempotently,
and enables auth: run it again to add nodes. Roles and users it manages end up
with exactly the planned permissions and roles (extras are revoked), so a
re-run also repairs drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from fwd.cluster.etcd import EtcdClient, EtcdError, prefix_end
from fwd.cluster.layout import Layout, check_node_name
from fwd.errors import PolicyError

log = structlog.get_logger("fwd.cluster.access")

ADMIN_ROLE = "fwd-admin"
READER_ROLE = "fwd-reader"
NODE_ROLE_PREFIX = "fwd-node-"
DEFAULT_ADMIN = "fwd-admin"
RESERVED = frozenset({"root"})

READ, WRITE, READWRITE = "read", "write", "readwrite"


def node_role(node: str) -> str:
    return f"{NODE_ROLE_PREFIX}{node}"


@dataclass(frozen=True, order=True)
class Grant:
    """One etcd permission: ``key`` alone when ``range_end`` is "", else [key, range_end)."""

    key: str
    range_end: str
    perm: str  # read | write | readwrite


def node_grants(layout: Layout, node: str) -> tuple[Grant, ...]:
    """What an agent needs, and nothing more."""
    return (
        Grant(layout.policies, prefix_end(layout.policies), READ),
        Grant(layout.labels_key(node), "", READ),
        Grant(layout.status_key(node), "", READWRITE),
    )


def admin_grants(layout: Layout) -> tuple[Grant, ...]:
    return (Grant(layout.prefix, prefix_end(layout.prefix), READWRITE),)


def reader_grants(layout: Layout) -> tuple[Grant, ...]:
    return (Grant(layout.prefix, prefix_end(layout.prefix), READ),)


@dataclass(frozen=True)
class Plan:
    """Roles (name -> grants) and users (name -> roles) that ``fwd cluster init`` makes."""

    roles: Mapping[str, tuple[Grant, ...]] = field(default_factory=dict)
    users: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _user_name(name: str, what: str) -> str:
    try:
        check_node_name(name)
    except PolicyError as e:
        raise PolicyError(what, e.reason) from None
    if name in RESERVED:
        raise PolicyError(what, f"{name!r} is etcd's superuser; pick another name")
    return name


def plan(
    layout: Layout,
    nodes: Iterable[str],
    admins: Iterable[str] = (DEFAULT_ADMIN,),
    readers: Iterable[str] = (),
) -> Plan:
    """The roles and users for these node, admin and reader names (validated)."""
    roles: dict[str, tuple[Grant, ...]] = {
        ADMIN_ROLE: admin_grants(layout),
        READER_ROLE: reader_grants(layout),
    }
    users: dict[str, tuple[str, ...]] = {}
    for name in admins:
        users[_user_name(name, "--admin")] = (ADMIN_ROLE,)
    for name in readers:
        if _user_name(name, "--reader") in users:
            raise PolicyError("--reader", f"{name!r} is already an admin")
        users[name] = (READER_ROLE,)
    for node in nodes:
        if _user_name(node, "--node") in users:
            raise PolicyError("--node", f"{node!r} is already an admin or reader: a node's user has its own role only")
        roles[node_role(node)] = node_grants(layout, node)
        users[node] = (node_role(node),)
    return Plan(roles, users)


def _perm_type(rpc: Any, perm: str) -> int:
    return int({READ: rpc.Permission.READ, WRITE: rpc.Permission.WRITE, READWRITE: rpc.Permission.READWRITE}[perm])


def _grant_of(rpc: Any, p: Any) -> Grant:
    names = {rpc.Permission.READ: READ, rpc.Permission.WRITE: WRITE, rpc.Permission.READWRITE: READWRITE}
    return Grant(p.key.decode(), p.range_end.decode(), names[p.permType])


def _exists(e: EtcdError) -> bool:
    return "already exists" in str(e)


async def _ensure_user(etcd: EtcdClient, name: str) -> bool:
    """Create ``name`` without a password (it can only log in with a certificate)."""
    rpc = etcd.rpc
    try:
        await etcd.auth("UserAdd", rpc.AuthUserAddRequest(name=name, options=rpc.UserAddOptions(no_password=True)))
        return True
    except EtcdError as e:
        if _exists(e):
            return False
        raise


async def _user_roles(etcd: EtcdClient, name: str) -> tuple[str, ...]:
    resp = await etcd.auth("UserGet", etcd.rpc.AuthUserGetRequest(name=name))
    return tuple(resp.roles)


async def user_roles(etcd: EtcdClient, name: str) -> tuple[str, ...]:
    """The roles etcd gives user ``name`` (needs root: used by tests and ``init``)."""
    return await _user_roles(etcd, name)


async def _ensure_role(etcd: EtcdClient, name: str, grants: tuple[Grant, ...]) -> None:
    rpc = etcd.rpc
    try:
        await etcd.auth("RoleAdd", rpc.AuthRoleAddRequest(name=name))
    except EtcdError as e:
        if not _exists(e):
            raise
    resp = await etcd.auth("RoleGet", rpc.AuthRoleGetRequest(role=name))
    have = {_grant_of(rpc, p) for p in resp.perm}
    for g in sorted(have - set(grants)):
        await etcd.auth(
            "RoleRevokePermission",
            rpc.AuthRoleRevokePermissionRequest(role=name, key=g.key.encode(), range_end=g.range_end.encode()),
        )
        log.info("etcd_permission_revoked", role=name, key=g.key, range_end=g.range_end, perm=g.perm)
    for g in grants:
        if g in have:
            continue
        perm = rpc.Permission(permType=_perm_type(rpc, g.perm), key=g.key.encode(), range_end=g.range_end.encode())
        await etcd.auth("RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(name=name, perm=perm))


async def apply_plan(etcd: EtcdClient, wanted: Plan) -> list[str]:
    """Make etcd's users and roles match ``wanted`` and enable auth; what changed, as lines.

    ``etcd`` must act as root (a certificate with CN=root once auth is on; any
    certificate the first time, when auth is still off).
    """
    rpc = etcd.rpc
    done: list[str] = []
    if await _ensure_user(etcd, "root"):
        done.append("user root (certificate CN=root)")
    if "root" not in await _user_roles(etcd, "root"):
        await etcd.auth("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"))
    for role, grants in wanted.roles.items():
        await _ensure_role(etcd, role, grants)
    for user, roles in wanted.users.items():
        if await _ensure_user(etcd, user):
            done.append(f"user {user}: {', '.join(roles)}")
        have = await _user_roles(etcd, user)
        for role in have:
            if role not in roles:
                await etcd.auth("UserRevokeRole", rpc.AuthUserRevokeRoleRequest(name=user, role=role))
                done.append(f"user {user}: revoked role {role}")
        for role in roles:
            if role not in have:
                await etcd.auth("UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=role))
    await etcd.auth("AuthEnable", rpc.AuthEnableRequest())
    done.append("auth enabled")
    log.info("etcd_access_initialised", users=len(wanted.users), roles=len(wanted.roles))
    return done
