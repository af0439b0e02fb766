"""EventService: a filtered, server-streamed subscription to drop events."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

from grpclib import GRPCError
from grpclib.const import Status

from fwd.api.fastwire import EncodedEventBatch
from fwd.api.gateway import Gateway
from fwd.api.gen.fwd import v1 as pb
from fwd.core.records import EventFilter
from fwd.policy.model import Action


class EventService(pb.EventServiceBase):
    def __init__(self, api: Gateway) -> None:
        self._api = api

    async def subscribe(self, message: pb.SubscribeRequest) -> AsyncIterator[pb.EventBatch]:
        names = {s.ifindex: s.name for s in await self._api.interfaces()}
        by_name = {n: i for i, n in names.items()}
        unknown = [n for n in message.interfaces if n not in by_name]
        if unknown:
            raise GRPCError(Status.INVALID_ARGUMENT, f"interfaces: no interface {unknown[0]!r}")
        if message.rule_ids:
            # As an unknown interface is: a filter that can never match is a mistake.
            enforced = await self._api.get_policy()
            known = {r.id for r in enforced.policy.rules}
            missing = [r for r in message.rule_ids if r not in known]
            if missing:
                raise GRPCError(
                    Status.INVALID_ARGUMENT,
                    f"rule_ids: no rule {missing[0]!r} in revision {enforced.revision}",
                )
        prefixes = []
        for i, text in enumerate(message.prefixes):
            try:
                prefixes.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise GRPCError(
                    Status.INVALID_ARGUMENT, f"prefixes[{i}]: invalid CIDR {text!r}"
                ) from None
        actions = set()
        for a in message.actions:
            if a == pb.Action.UNSPECIFIED:
                raise GRPCError(Status.INVALID_ARGUMENT, "actions: UNSPECIFIED is not an action")
            actions.add(Action.ALLOW if a == pb.Action.ALLOW else Action.DROP)
        flt = EventFilter(
            actions=frozenset(actions),
            rule_ids=frozenset(message.rule_ids),
            ifindexes=frozenset(by_name[n] for n in message.interfaces),
            prefixes=tuple(prefixes),
        )
        batches = await self._api.subscribe(flt)
        with batches:
            async for batch in batches:
                # Hand-encoded: betterproto2 objects per event cannot keep up with a flood.
                # One encoder for every subscription: shared batches are encoded once.
                # Interfaces are named from the live link table the batch carries; the
                # table at subscription time only stands in while none has come yet.
                named = batch.interfaces or names
                encoded = self._api.batch_encoder.encode(batch.events, named, batch.lost)
                yield EncodedEventBatch(encoded)
