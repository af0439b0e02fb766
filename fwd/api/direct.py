"""Cluster commands straight to etcd with the caller's own certificate, no agent involved.

With least privilege (docs/cluster.md) an agent's etcd user may read policies
and write its own status, nothing else: it cannot write a policy or a label for
anyone. So ``fwd policy apply --name N --etcd https://... --etcd-cert admin.pem
...`` and ``fwd cluster status|wait|label|policies|delete --etcd ...`` talk to
etcd themselves. They do it by serving the very same ClusterService and
PolicyService.ApplyPolicy in-process (grpclib's in-memory channel) over a
ClusterAdmin connected with the caller's identity: one implementation and one
output for every cluster command, whether an agent or the caller reaches etcd.

``fwd cluster init`` (``init``) is the one-time setup run with etcd's root
certificate: users and roles (fwd/cluster/access.py) and auth enabled.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar, cast

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status

from fwd import messages
from fwd.api.services import cluster as cluster_api
from fwd.api.gen.fwd import v1 as pb
from fwd.cluster.credentials import TlsCredentials, TlsFiles
from fwd.cluster.etcd import EtcdClient, check_transport
from fwd.cluster.layout import DEFAULT_PREFIX, Layout

T = TypeVar("T")

NEEDS_AGENT = "{what} asks one agent what it enforces: use --socket or --server, not --etcd"


def add_tls_options(parser: argparse.ArgumentParser, *, agent: bool = False) -> None:
    """``--etcd-ca/--etcd-cert/--etcd-key`` (etcdctl's --cacert/--cert/--key), ``--etcd-insecure``;
    for the agent also its optional admin identity."""
    parser.add_argument("--etcd-ca", default="", metavar="FILE",
                        help="verify etcd's certificate with this CA (default: the system's roots)")
    who = "this node's identity: CN = node name" if agent else "your identity (CN = etcd user)"
    parser.add_argument("--etcd-cert", default="", metavar="FILE",
                        help=f"client certificate for etcd, {who}; re-read when the file changes")
    parser.add_argument("--etcd-key", default="", metavar="FILE", help="the key of --etcd-cert")
    parser.add_argument("--etcd-insecure", action="store_true",
                        help="accept http:// etcd URLs (plain text, no identity): tests and labs only")
    if agent:
        parser.add_argument(
            "--etcd-admin-cert", default="", metavar="FILE",
            help="an etcd admin identity for the cluster calls this agent's API takes (policy "
            "and label writes, status reads); without it those need --etcd on the CLI",
        )
        parser.add_argument("--etcd-admin-key", default="", metavar="FILE", help="the key of --etcd-admin-cert")
    # fmt: skip


def etcd_parent() -> argparse.ArgumentParser:
    """The options of a command that may talk to etcd directly (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("straight to etcd (instead of through an agent)")
    group.add_argument("--etcd", default="", metavar="URL[,URL...]",
                       help="talk to etcd at these endpoints with your own certificate, not to an agent")
    group.add_argument("--etcd-prefix", default=DEFAULT_PREFIX, metavar="PREFIX",
                       help="keys live under this prefix (default: %(default)s)")
    add_tls_options(cast(argparse.ArgumentParser, group))
    return parent


@dataclass(frozen=True)
class EtcdAccess:
    """Where etcd is and who we are to it, from the command line (validated by ``client``)."""

    urls: str
    files: TlsFiles = TlsFiles()
    insecure: bool = False
    prefix: str = DEFAULT_PREFIX

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EtcdAccess:
        return cls(args.etcd, TlsFiles(args.etcd_ca, args.etcd_cert, args.etcd_key),
                   args.etcd_insecure, args.etcd_prefix)  # fmt: skip

    def credentials(self) -> TlsCredentials | None:
        """Check the transport (no plain http:// unless insecure) and load the files."""
        scheme = check_transport(self.urls, tls=bool(self.files.paths), insecure=self.insecure)
        return TlsCredentials(self.files) if scheme == "https" else None

    def client(self, timeout: float) -> EtcdClient:
        return EtcdClient(self.urls, timeout=timeout, credentials=self.credentials())


class DirectApi:
    """What the cluster handlers need of ``fwd.actors.api.Api``: ``ask_cluster``, answered
    by ClusterCommands in this process instead of the agent's ClusterAdmin actor."""

    cluster_mode = True

    def __init__(self, admin: Any) -> None:
        self._admin = admin

    async def ask_cluster(
        self, make: Callable[[MemoryObjectSendStream[messages.Reply[T]]], messages.ClusterAdminCommand]
    ) -> T:
        from fwd.api.status import grpc_errors

        tx, rx = anyio.create_memory_object_stream[messages.Reply[T]](1)
        with rx:
            await self._admin.serve(make(tx))
            reply = await rx.receive()
        with grpc_errors("cluster"):
            return reply.unwrap()


class DirectPolicyService(pb.PolicyServiceBase):
    """PolicyService without an agent: ApplyPolicy writes etcd; the rest needs an agent."""

    def __init__(self, api: DirectApi) -> None:
        self._api = api

    async def get_policy(self, message: pb.GetPolicyRequest) -> pb.GetPolicyResponse:
        raise GRPCError(Status.FAILED_PRECONDITION, NEEDS_AGENT.format(what="fwd policy get"))

    async def apply_policy(self, message: pb.ApplyPolicyRequest) -> pb.ApplyPolicyResponse:
        if not message.name and not message.selector and message.priority is None:
            # Without a name it would silently become "default" for every node.
            raise GRPCError(Status.INVALID_ARGUMENT,
                            "name: give the policy a --name (and --selector) when writing etcd directly")  # fmt: skip
        return await cluster_api.apply_policy(cast(Any, self._api), message)


@contextlib.asynccontextmanager
async def direct_channel(args: argparse.Namespace) -> AsyncIterator[Channel]:
    """A channel to the cluster services served in this process over etcd (``--etcd``)."""
    from grpclib.testing import ChannelFor

    from fwd.cluster.commands import ClusterCommands

    access = EtcdAccess.from_args(args)
    async with access.client(timeout=args.timeout) as etcd:
        api = DirectApi(ClusterCommands(etcd, Layout(access.prefix)))
        services: list[Any] = [cluster_api.ClusterService(cast(Any, api)), DirectPolicyService(api)]
        async with ChannelFor(services) as channel:
            yield channel


# --- fwd cluster init ------------------------------------------------------------------


def register_init(csub: Any) -> None:
    """``fwd cluster init`` under ``fwd cluster``."""
    init = csub.add_parser(
        "init", parents=[etcd_parent()], help="once, as etcd's root: roles per node, admin role, auth on",
        description="Create etcd users and roles for cluster mode and enable auth (run with etcd's "
        "root certificate, CN=root; idempotent: run again to add nodes, it also repairs drift). "
        "Each --node gets a user (its certificate's CN) allowed to read policies/ and its own "
        "labels and to write only its own status; --admin users may write policies and labels.",
    )  # fmt: skip
    init.add_argument("--node", action="append", default=[], metavar="NODE",
                      help="a node's name (= its certificate's CN); repeatable")  # fmt: skip
    init.add_argument("--admin", action="append", default=[], metavar="USER",
                      help="a user with the fwd-admin role (default: fwd-admin); repeatable")  # fmt: skip
    init.add_argument("--reader", action="append", default=[], metavar="USER",
                      help="a user who may read everything under the prefix; repeatable")  # fmt: skip
    init.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                      help="per etcd call (default: %(default)s)")  # fmt: skip
    init.set_defaults(handler=init_command, handler_io=True)


def init_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    import sys

    from fwd.cluster import access as acl
    from fwd.errors import FwdError

    out = out or sys.stdout
    err = err or sys.stderr
    if not args.etcd:
        err.write("fwd: cluster init: --etcd is required (with etcd's root certificate)\n")
        return 2
    layout = Layout(args.etcd_prefix)
    try:
        wanted = acl.plan(layout, args.node, args.admin or [acl.DEFAULT_ADMIN], args.reader)
        etcd = EtcdAccess.from_args(args).client(timeout=args.timeout)

        async def go() -> list[str]:
            async with etcd:
                return await acl.apply_plan(etcd, wanted)

        done = anyio.run(go)
    except FwdError as e:
        err.write(f"fwd: cluster init: {e}\n")
        return 1
    for line in done:
        out.write(f"{line}\n")
    for role, grants in sorted(wanted.roles.items()):
        perms = ", ".join(f"{g.perm} {g.key}{'..' + g.range_end if g.range_end else ''}" for g in grants)
        out.write(f"role {role}: {perms}\n")
    return 0
