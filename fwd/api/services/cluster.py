"""The API in cluster mode: ClusterService, and PolicyService.ApplyPolicy writing etcd.

Handlers validate, ask the ClusterAdmin actor (fwd/actors/cluster_admin.py) and turn
its answer into a response, like every other handler: they never talk to etcd
themselves. ``fwd cluster wait`` polls the status records through the actor
(every POLL_INTERVAL) until the selected nodes caught up or time ran out; an
unreachable etcd only ends it early if it is still unreachable at the deadline.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
from grpclib import GRPCError
from grpclib.const import Status

from fwd import messages
from fwd.api import convert
from fwd.api.gateway import Gateway
from fwd.api.gen.fwd import v1 as pb
from fwd.cluster.layout import check_node_name, check_policy_name
from fwd.cluster.selector import LABEL_KEY_RE, Selector, parse_labels, parse_selector
from fwd.cluster.overview import WaitState, wait_state
from fwd.errors import PolicyError

if TYPE_CHECKING:
    from fwd.api.policystream import ApplyPolicyRequest as StreamedRequest

DEFAULT_POLICY_NAME = "default"
DEFAULT_PRIORITY = 100
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 3600.0
POLICY_FIELDS_CLUSTER_ONLY = ("name", "selector", "priority")
POLL_INTERVAL = 0.05
UNAVAILABLE_RETRY = 0.2  # seconds between status reads while etcd is unreachable


def _invalid(e: PolicyError) -> GRPCError:
    return GRPCError(Status.INVALID_ARGUMENT, str(e))


def selector_of(text: str) -> Selector:
    """Parse a selector of a request; INVALID_ARGUMENT naming it when malformed."""
    try:
        return parse_selector(text)
    except PolicyError as e:
        raise _invalid(e) from None


def refuse_cluster_fields(message: pb.ApplyPolicyRequest | StreamedRequest) -> None:
    """Local mode: a request naming a cluster policy is a mistake, not something to ignore."""
    given = [f for f in POLICY_FIELDS_CLUSTER_ONLY if getattr(message, f) not in ("", None)]
    if given:
        raise GRPCError(
            Status.INVALID_ARGUMENT,
            f"{given[0]}: only in cluster mode (start the agent with --etcd)",
        )


async def apply_policy(
    api: Gateway, message: pb.ApplyPolicyRequest | StreamedRequest
) -> pb.ApplyPolicyResponse:
    """Write the policy to etcd (compare-and-swap when expect_revision is given)."""
    if message.confirm_within_seconds:
        raise GRPCError(
            Status.FAILED_PRECONDITION,
            "confirm_within_seconds: cluster mode has no commit-confirm; write the previous "
            "policy back to etcd to undo a change",
        )
    name = message.name or DEFAULT_POLICY_NAME
    priority = DEFAULT_PRIORITY if message.priority is None else message.priority
    try:
        check_policy_name(name)
        selector_of(message.selector)
        policy = convert.policy_from_proto(message.policy)
    except PolicyError as e:
        raise _invalid(e) from None
    info = messages.ClusterPolicyInfo(name, message.selector, priority, 0, policy)
    revision: int = await api.ask_cluster(
        lambda r: messages.PutClusterPolicy(info, message.expect_revision, r)
    )
    return pb.ApplyPolicyResponse(revision=revision)


def node_to_proto(n: messages.NodeView) -> pb.NodeStatus:
    return pb.NodeStatus(
        node=n.node,
        labels=dict(n.labels),
        live=n.live,
        synced_revision=n.synced_revision,
        lag=n.lag,
        policy_hash=n.policy_hash,
        policies=[pb.PolicyRef(name=p, mod_revision=r) for p, r in n.policies],
        applied_revision=n.applied_revision,
        interfaces=[pb.NodeInterface(name=i, mode=m) for i, m in n.interfaces],
        last_error=n.last_error,
        version=n.version,
        updated_unix_ms=int(n.updated * 1000),
    )


class ClusterService(pb.ClusterServiceBase):
    """fwd.v1.ClusterService; every call is FAILED_PRECONDITION in local mode."""

    def __init__(self, api: Gateway) -> None:
        self._api = api

    async def status(self, message: pb.ClusterStatusRequest) -> pb.ClusterStatusResponse:
        selector = selector_of(message.selector)
        view: messages.ClusterView = await self._api.ask_cluster(messages.ReadClusterStatus)
        return pb.ClusterStatusResponse(
            revision=view.revision,
            nodes=[node_to_proto(n) for n in view.nodes if selector.matches(dict(n.labels))],
            policy_revision=view.policy_revision,
        )

    async def wait(self, message: pb.ClusterWaitRequest) -> pb.ClusterWaitResponse:
        selector = selector_of(message.selector)
        timeout = message.timeout_seconds or DEFAULT_WAIT_SECONDS
        if not 0 < timeout <= MAX_WAIT_SECONDS:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"timeout_seconds: must be in (0, {MAX_WAIT_SECONDS:g}]"
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                view: messages.ClusterView = await self._api.ask_cluster(
                    messages.ReadClusterStatus
                )
            except GRPCError as e:
                # etcd away for a moment is no reason to give up before the deadline.
                if e.status is not Status.UNAVAILABLE or time.monotonic() >= deadline:
                    raise
                await anyio.sleep(UNAVAILABLE_RETRY)
                continue
            state = wait_state(view, message.revision, selector.matches)
            if state.done:
                return pb.ClusterWaitResponse(nodes=list(state.live), silent=list(state.silent))
            if time.monotonic() >= deadline:
                raise GRPCError(Status.DEADLINE_EXCEEDED, _behind_message(state, message, timeout))
            await anyio.sleep(POLL_INTERVAL)

    async def label(self, message: pb.LabelRequest) -> pb.LabelResponse:
        try:
            check_node_name(message.node)
            add = parse_labels([f"{k}={v}" for k, v in sorted(message.set.items())])
            remove = tuple(message.remove)
            for i, key in enumerate(remove):
                if not LABEL_KEY_RE.match(key):
                    raise PolicyError(f"remove[{i}]", f"invalid label key {key!r}")
        except PolicyError as e:
            raise _invalid(e) from None
        changed: tuple[int, messages.Labels] = await self._api.ask_cluster(
            lambda r: messages.SetNodeLabels(message.node, tuple(sorted(add.items())), remove, r)
        )
        revision, labels = changed
        return pb.LabelResponse(revision=revision, labels=dict(labels))

    async def list_policies(self, message: pb.ListPoliciesRequest) -> pb.ListPoliciesResponse:
        listed: tuple[int, tuple[messages.ClusterPolicyInfo, ...]] = await self._api.ask_cluster(
            messages.ListClusterPolicies
        )
        revision, infos = listed
        return pb.ListPoliciesResponse(
            revision=revision,
            policies=[
                pb.ClusterPolicy(
                    name=i.name, selector=i.selector, priority=i.priority,
                    mod_revision=i.mod_revision, policy=convert.policy_to_proto(i.policy),
                )  # fmt: skip
                for i in infos
            ],
        )

    async def delete_policy(self, message: pb.DeletePolicyRequest) -> pb.DeletePolicyResponse:
        try:
            check_policy_name(message.name)
        except PolicyError as e:
            raise _invalid(e) from None
        revision: int = await self._api.ask_cluster(
            lambda r: messages.DeleteClusterPolicy(message.name, message.expect_revision, r)
        )
        return pb.DeletePolicyResponse(revision=revision)


def _behind_message(state: WaitState, message: pb.ClusterWaitRequest, timeout: float) -> str:
    where = f" matching {message.selector!r}" if message.selector else ""
    return (
        f"after {timeout:g}s, {len(state.behind)} of {len(state.live)} live nodes{where} "
        f"have not synced revision {message.revision}: {state.describe_behind()}"
    )
