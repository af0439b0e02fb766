"""Datapath -> Events (slot names) and Api -> Events (subscriptions)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd.core.records import DropEvent, EventFilter
from fwd.messages.reply import Reply


@dataclass(frozen=True)
class SlotNames:
    """Datapath -> Events: the counter slot -> rule id table of the enforced policy.

    Sent whenever the table changes (after every apply, and once at start), so
    the Events actor names rules without sharing the Datapath's state. Reserved
    slots may be included (e.g. ``(default)``).
    """

    revision: int
    names: tuple[tuple[int, str], ...] | None  # None: unchanged since the last
    # ifindex -> interface name, the live link table (events name their interface
    # from it, not from a table captured when a subscription began).
    interfaces: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class EventBatch:
    """Events -> one subscriber: decoded events, and how many it lost before them.

    ``lost`` counts events that matched this subscriber's filter but were
    dropped because its stream was full, since the previous batch it received.
    """

    events: tuple[DropEvent, ...]
    lost: int = 0
    # The interface names when the batch was read (shared, never mutated).
    interfaces: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Subscribe:
    """Api -> Events: start a subscription; the reply carries its receive stream.

    ``buffer`` bounds the subscriber's stream in batches (each at most the
    actor's per-wake-up budget of events). Unsubscribe by closing the stream.
    """

    filter: EventFilter
    reply: MemoryObjectSendStream[Reply[MemoryObjectReceiveStream[EventBatch]]]
    buffer: int = 64


EventsCommand = Subscribe
