"""SetService: add and remove elements of named sets, list sets and their elements."""

from __future__ import annotations

from typing import Any

from grpclib import GRPCError
from grpclib.const import Status

from fwd import messages
from fwd.api import convert
from fwd.api.gateway import Gateway
from fwd.api.gen.fwd import v1 as pb
from fwd.api.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, parse_page_token


class SetService(pb.SetServiceBase):
    def __init__(self, api: Gateway) -> None:
        self._api = api

    async def add_elements(self, message: pb.SetElementsRequest) -> pb.SetChangeResponse:
        return await self._change(message, messages.SetAddElements)

    async def remove_elements(self, message: pb.SetElementsRequest) -> pb.SetChangeResponse:
        return await self._change(message, messages.SetRemoveElements)

    async def _change(self, message: pb.SetElementsRequest, kind: Any) -> pb.SetChangeResponse:
        self._api.local_only("changing set elements")
        if not message.set:
            raise GRPCError(Status.INVALID_ARGUMENT, "set: is required")
        applied = await self._api.change(
            lambda r: kind(
                message.set, tuple(message.elements), r,
                expect_revision=message.expect_revision, force=message.force,
            )
        )
        if not applied.unchanged:
            self._api.superseded(applied.revision)
        return pb.SetChangeResponse(
            revision=applied.revision, changed=applied.elements_changed,
            unchanged=applied.elements_unchanged,
        )

    async def list_sets(self, message: pb.ListSetsRequest) -> pb.ListSetsResponse:
        return pb.ListSetsResponse(
            sets=[
                pb.SetSummary(name=s.name, type=convert.set_type_to_proto(s.type), size=s.size)
                for s in await self._api.sets()
            ]
        )

    async def list_elements(self, message: pb.ListElementsRequest) -> pb.ListElementsResponse:
        offset = parse_page_token(message.page_token)
        size = min(message.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await self._api.set_page(message.set, offset, size)
        end = offset + len(page.elements)
        return pb.ListElementsResponse(
            elements=list(page.elements),
            next_page_token=str(end) if end < page.total else "",
            revision=page.revision,
            total=page.total,
        )
