"""PolicyService: get, apply (atomically, optionally with a confirm deadline), confirm, roll back, history."""

from __future__ import annotations

import time

import grpclib.const
from grpclib import GRPCError
from grpclib.const import Status

from fwd.api import convert, policystream
from fwd.api.gateway import Gateway
from fwd.api.gen.fwd import v1 as pb
from fwd.api.paging import MAX_PAGE_SIZE, parse_page_token
from fwd.api.services import cluster as cluster_api

MAX_CONFIRM_SECONDS = 7 * 24 * 3600


class PolicyService(pb.PolicyServiceBase):
    def __init__(self, api: Gateway) -> None:
        self._api = api

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        # ApplyPolicy's request is decoded rule by rule (fwd/api/policystream.py).
        mapping = super().__mapping__()
        name = "/fwd.v1.PolicyService/ApplyPolicy"
        mapping[name] = mapping[name]._replace(request_type=policystream.ApplyPolicyRequest)
        return mapping

    async def get_policy(self, message: pb.GetPolicyRequest) -> pb.GetPolicyResponse:
        if self._api.cluster_mode:
            # The merged policy this node enforces, at the etcd revision it synced.
            state = await self._api.sync_state()
            return pb.GetPolicyResponse(
                revision=state.synced_revision, policy=convert.policy_to_proto(state.policy)
            )
        applied = await self._api.get_policy()
        return pb.GetPolicyResponse(
            revision=applied.revision,
            policy=convert.policy_to_proto(applied.policy),
            adoption=convert.adoption_to_proto(applied.adoption),
        )

    async def apply_policy(  # the streamed request type (see __mapping__)
        self, message: pb.ApplyPolicyRequest | policystream.ApplyPolicyRequest
    ) -> pb.ApplyPolicyResponse:
        if self._api.cluster_mode:
            return await cluster_api.apply_policy(self._api, message)
        cluster_api.refuse_cluster_fields(message)
        if message.confirm_within_seconds > MAX_CONFIRM_SECONDS:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"confirm_within_seconds: at most {MAX_CONFIRM_SECONDS}",
            )
        applied = await self._api.apply_policy(
            message.policy, message.expect_revision, message.force,
            unchanged_ok=not message.confirm_within_seconds,
        )
        deadline = 0.0
        if applied.unchanged:
            return pb.ApplyPolicyResponse(revision=applied.revision, unchanged=True)
        if message.confirm_within_seconds:
            pending = await self._api.arm_confirm(
                applied.revision, time.time() + message.confirm_within_seconds
            )
            deadline = pending.deadline
        else:
            self._api.superseded(applied.revision)
        return pb.ApplyPolicyResponse(
            revision=applied.revision, confirm_deadline_unix_ms=int(deadline * 1000)
        )

    async def confirm_policy(
        self, message: pb.ConfirmPolicyRequest
    ) -> pb.ConfirmPolicyResponse:
        self._api.local_only("ConfirmPolicy")
        pending = await self._api.confirm(message.revision)
        return pb.ConfirmPolicyResponse(revision=pending.revision)

    async def rollback_policy(
        self, message: pb.RollbackPolicyRequest
    ) -> pb.RollbackPolicyResponse:
        self._api.local_only("RollbackPolicy")
        applied = await self._api.rollback(
            message.revision, message.expect_revision, message.force
        )
        self._api.superseded(applied.revision)
        return pb.RollbackPolicyResponse(revision=applied.revision)

    async def list_history(self, message: pb.ListHistoryRequest) -> pb.ListHistoryResponse:
        offset = parse_page_token(message.page_token)
        size = min(message.page_size or 100, MAX_PAGE_SIZE)
        entries, total = await self._api.history(offset, size)
        end = offset + len(entries)
        return pb.ListHistoryResponse(
            revisions=[
                pb.Revision(
                    revision=e.revision,
                    applied_at_unix_ms=int(e.applied_at * 1000),
                    rules=e.rules,
                    default_action=convert.action_to_proto(e.default_action),
                    dry_run=e.dry_run,
                )
                for e in entries
            ],
            next_page_token=str(end) if end < total else "",
        )
