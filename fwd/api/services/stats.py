"""StatsService: per-rule counters, paged."""

from __future__ import annotations

from fwd.api import convert
from fwd.api.gateway import Gateway
from fwd.api.gen.fwd import v1 as pb
from fwd.api.paging import page_bounds, parse_page_token


class StatsService(pb.StatsServiceBase):
    def __init__(self, api: Gateway) -> None:
        self._api = api

    async def list_rule_stats(self, message: pb.ListRuleStatsRequest) -> pb.ListRuleStatsResponse:
        parse_page_token(message.page_token)  # a bad token fails before asking the datapath
        stats = await self._api.rule_stats()
        start, end, next_token = page_bounds(message.page_size, message.page_token, len(stats))
        return pb.ListRuleStatsResponse(
            stats=[convert.rule_stats_to_proto(s) for s in stats[start:end]],
            next_page_token=next_token,
        )
