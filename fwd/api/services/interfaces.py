"""InterfaceService: every interface Links knows, with attach mode and state."""

from __future__ import annotations

from fwd.api import convert
from fwd.api.gateway import Gateway
from fwd.api.gen.fwd import v1 as pb


class InterfaceService(pb.InterfaceServiceBase):
    def __init__(self, api: Gateway) -> None:
        self._api = api

    async def list_interfaces(self, message: pb.ListInterfacesRequest) -> pb.ListInterfacesResponse:
        statuses = sorted(await self._api.interfaces(), key=lambda s: s.ifindex)
        return pb.ListInterfacesResponse(
            interfaces=[convert.interface_to_proto(s) for s in statuses]
        )
