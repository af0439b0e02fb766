"""ApplyPolicyRequest decoded one rule at a time (a 100,000-rule request stays small).

betterproto2 turns a request of 100,000 rules into 100,000 ``pb.Rule`` objects
at once: ~90 MB and ~2 s, all garbage a moment later, and the fragmentation it
leaves keeps the agent's RSS high long after. Here the request's top level and
its ``Policy`` are scanned on the wire: each ``rules`` entry is remembered as a
(start, end) slice of the request body, everything else is decoded by
betterproto2 as before. Rules are decoded, type-checked and handed to the
validator one at a time (``RuleDicts``), so only one ``pb.Rule`` and one plain
dict exist at any moment.

The semantics are betterproto2's: the same fields, the same checks
(``fwd.api.wire.check_types``), repeated ``policy`` fields merged by
concatenation as protobuf specifies. ``tests/unit/test_policystream.py``
compares the two decoders.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

from fwd.api import wire
from fwd.api.gen.fwd import v1 as pb
from fwd.errors import PolicyError
from fwd.policy.model import RuleSource

_POLICY_FIELD = 1  # ApplyPolicyRequest.policy
_RULES_FIELD = 3  # Policy.rules


_varint = wire.read_varint


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, payload start, field end) of each field."""
    pos = start
    while pos < end:
        first = pos
        tag, pos = _varint(data, pos)
        number, kind = tag >> 3, tag & 7
        payload = pos
        if kind == 0:
            _, pos = _varint(data, pos)
        elif kind == 1:
            pos += 8
        elif kind == 2:
            size, payload = _varint(data, pos)
            pos = payload + size
        elif kind == 5:
            pos += 4
        else:  # groups (3, 4) and the undefined 6, 7
            raise ValueError(f"unsupported wire type {kind}")
        if number == 0 or pos > end:
            raise ValueError("malformed field")
        yield number, kind, first, payload, pos


class RuleDicts(RuleSource):
    """The ``rules`` of a streamed policy, each decoded into the YAML shape on access."""

    def __init__(self, data: bytes, bounds: array[int]) -> None:
        self._data = data
        self._bounds = bounds  # start, end, start, end, ...

    def __len__(self) -> int:
        return len(self._bounds) // 2

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from fwd.api.convert import rule_to_dict  # convert imports this module

        data, bounds = self._data, self._bounds
        for i in range(len(bounds) // 2):
            try:
                rule = pb.Rule.parse(data[bounds[2 * i] : bounds[2 * i + 1]])
                wire.check_types(rule)
            except Exception as exc:  # untrusted bytes: any parse failure is the caller's
                raise PolicyError(f"rules[{i}]", f"not a valid Rule message ({exc})") from None
            yield rule_to_dict(rule)

    def clear(self) -> None:
        """Forget the rules (their bytes are no longer needed)."""
        self._data, self._bounds = b"", array("I")


class StreamedPolicy:
    """A ``pb.Policy`` whose ``rules`` are still on the wire."""

    def __init__(self, rest: pb.Policy, rules: RuleDicts) -> None:
        self.default_action = rest.default_action
        self.dry_run = rest.dry_run
        self.log_default = rest.log_default
        self.sets = rest.sets
        self.rules = rules


class ApplyPolicyRequest:
    """Stands in for ``pb.ApplyPolicyRequest`` as the ApplyPolicy handler's request type
    (grpclib's codec calls ``FromString``); same class name, so errors read the same."""

    def __init__(self, head: pb.ApplyPolicyRequest, policy: StreamedPolicy | None) -> None:
        self.policy = policy
        self.expect_revision = head.expect_revision
        self.force = head.force
        self.confirm_within_seconds = head.confirm_within_seconds
        # Cluster mode (fwd/api/services/cluster.py): which etcd policy this is.
        self.name = head.name
        self.selector = head.selector
        self.priority = head.priority

    @classmethod
    def FromString(cls, data: bytes) -> ApplyPolicyRequest:  # noqa: N802 - the codec's name
        data = bytes(data)
        head, policy_parts = bytearray(), bytearray()
        found = False
        for number, kind, first, payload, end in _fields(data, 0, len(data)):
            if number == _POLICY_FIELD and kind == 2:
                policy_parts += data[payload:end]  # repeated occurrences merge
                found = True
            else:
                head += data[first:end]
        request = pb.ApplyPolicyRequest.parse(bytes(head))
        wire.check_types(request)
        if not found:
            return cls(request, None)
        body = bytes(policy_parts)
        rest, bounds = bytearray(), array("I")
        for number, kind, first, payload, end in _fields(body, 0, len(body)):
            if number == _RULES_FIELD and kind == 2:
                bounds.append(payload)
                bounds.append(end)
            else:
                rest += body[first:end]
        settings = pb.Policy.parse(bytes(rest))
        wire.check_types(settings, "policy")
        return cls(request, StreamedPolicy(settings, RuleDicts(body, bounds)))
