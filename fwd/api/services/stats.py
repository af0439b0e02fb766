"""StatsService: per-rule counters, paged."""

from __future__ import annotations

from fwd.api import statswire
from fwd.api.gateway import Gateway
from fwd.api.gen.fwd import v1 as pb
from fwd.api.paging import DEFAULT_PAGE_SIZE, parse_page_token

# Counter rows are small (~20 bytes each): a page may hold more than other lists.
MAX_STATS_PAGE = 50_000


class StatsService(pb.StatsServiceBase):
    def __init__(self, api: Gateway) -> None:
        self._api = api

    async def list_rule_stats(self, message: pb.ListRuleStatsRequest) -> pb.ListRuleStatsResponse:
        start = parse_page_token(message.page_token)  # a bad token fails before asking
        size = min(message.page_size or DEFAULT_PAGE_SIZE, MAX_STATS_PAGE)
        # One row more than the page tells whether another page follows; only the
        # page's counters are read, and the reply is encoded by hand (fwd/api/statswire.py).
        rows = await self._api.rule_stats(start, size + 1)
        next_token = str(start + size) if len(rows) > size else ""
        return statswire.EncodedStatsPage(statswire.encode_page(rows[:size], next_token))
