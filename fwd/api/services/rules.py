"""RuleService: add and delete single rules, list the rules page by page."""

from __future__ import annotations

from grpclib import GRPCError
from grpclib.const import Status

from fwd import messages
from fwd.api import convert
from fwd.api.gateway import Gateway
from fwd.api.gen.fwd import v1 as pb
from fwd.api.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, parse_page_token
from fwd.api.status import grpc_errors
from fwd.policy import model


class RuleService(pb.RuleServiceBase):
    def __init__(self, api: Gateway) -> None:
        self._api = api

    async def add_rule(self, message: pb.AddRuleRequest) -> pb.RuleChangeResponse:
        self._api.local_only("AddRule")
        anchors = [
            name
            for name, given in (
                ("position", message.position is not None),
                ("before_id", bool(message.before_id)),
                ("after_id", bool(message.after_id)),
            )
            if given
        ]
        if len(anchors) > 1:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"{anchors[1]}: give at most one of position, "
                "before_id, after_id"
            )
        if message.rule is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "rule: is required")
        with grpc_errors("add rule"):
            rule = model.parse_rule(convert.rule_to_dict(message.rule), "rule")
        applied = await self._api.change(
            lambda r: messages.AddRule(
                rule, r, position=message.position, before_id=message.before_id or None,
                after_id=message.after_id or None, expect_revision=message.expect_revision,
                force=message.force,
            )
        )
        self._api.superseded(applied.revision)
        return pb.RuleChangeResponse(revision=applied.revision)

    async def delete_rule(self, message: pb.DeleteRuleRequest) -> pb.RuleChangeResponse:
        self._api.local_only("DeleteRule")
        if not message.rule_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "rule_id: is required")
        applied = await self._api.change(
            lambda r: messages.DeleteRule(
                message.rule_id, r, expect_revision=message.expect_revision, force=message.force
            )
        )
        self._api.superseded(applied.revision)
        return pb.RuleChangeResponse(revision=applied.revision)

    async def list_rules(self, message: pb.ListRulesRequest) -> pb.ListRulesResponse:
        offset = parse_page_token(message.page_token)
        size = min(message.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await self._api.rule_page(offset, size)
        end = offset + len(page.rules)
        return pb.ListRulesResponse(
            rules=[convert.rule_to_proto(r) for r in page.rules],
            next_page_token=str(end) if end < page.total else "",
            revision=page.revision,
            total=page.total,
        )
