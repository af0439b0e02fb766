"""The etcd key layout of cluster mode and the JSON records under it (pure).

::

    <prefix>policies/<name>   {"selector": "role=edge", "priority": 100, "policy": {...}}
    <prefix>labels/<node>     {"role": "edge"}
    <prefix>status/<node>     StatusRecord as JSON, attached to the node's lease

The prefix defaults to ``/fwd/``. An agent reads and watches two ranges
(``node_ranges``): ``policies/`` and its own ``labels/<node>``, exactly what its
etcd role lets it read (fwd/cluster/access.py). Not the other nodes' labels:
a relabel is then one event for one node, not one for every node, and a
node's key cannot reveal the others' labels. Nor ``status/``: 1,000 status
writes are not fanned out to 1,000 watchers.

Decoding untrusted values raises PolicyError naming the key and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fwd.cluster.selector import LABEL_KEY_RE, LABEL_VALUE_RE, Selector, parse_selector
from fwd.errors import PolicyError
from fwd.policy.model import Policy, policy_from_dict, policy_to_dict

DEFAULT_PREFIX = "/fwd/"
# Spec: 1-64 of [A-Za-z0-9_.-]. Deviation: the first character must be a letter or
# digit, because the name prefixes rule ids (which must start so) and rules out
# "." and ".." as path-like names.
POLICY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1
RECORD_KEYS = frozenset({"selector", "priority", "policy"})


def check_policy_name(name: str) -> str:
    if not isinstance(name, str) or not POLICY_NAME_RE.match(name):
        raise PolicyError(
            "name", f"invalid policy name {name!r} (1-64 characters: letters, digits, _ . -; "
            "starting with a letter or digit)"
        )  # fmt: skip
    return name


def check_node_name(node: str) -> str:
    if not isinstance(node, str) or not NODE_NAME_RE.match(node):
        raise PolicyError("node", f"invalid node name {node!r} (letters, digits, _ . -)")
    return node


@dataclass(frozen=True)
class Layout:
    """Where everything lives under one prefix (``--etcd-prefix``)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")

    @property
    def policies(self) -> str:
        return f"{self.prefix}policies/"

    @property
    def labels(self) -> str:
        return f"{self.prefix}labels/"

    @property
    def status(self) -> str:
        return f"{self.prefix}status/"

    def policy_key(self, name: str) -> str:
        return self.policies + check_policy_name(name)

    def labels_key(self, node: str) -> str:
        return self.labels + check_node_name(node)

    def status_key(self, node: str) -> str:
        return self.status + check_node_name(node)

    def watch_range(self) -> tuple[str, str]:
        """``[start, end)`` covering labels/ and policies/ but not status/."""
        policies = self.policies
        return self.labels, policies[:-1] + chr(ord(policies[-1]) + 1)

    def node_ranges(self, node: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """What ``node``'s agent reads and watches: every policy, and its own labels key
        (``(key, "")`` is the one key)."""
        policies = self.policies
        return (policies, policies[:-1] + chr(ord(policies[-1]) + 1)), (self.labels_key(node), "")

    def name_in(self, directory: str, key: str) -> str | None:
        """The last part of ``key`` if it lies directly under ``directory``, else None."""
        if key.startswith(directory):
            rest = key[len(directory) :]
            if rest and "/" not in rest:
                return rest
        return None


# --- policies -------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyRecord:
    """One policy as stored in etcd, validated. ``mod_revision`` is etcd's."""

    name: str
    selector: Selector
    priority: int
    policy: Policy
    mod_revision: int = 0
    selector_text: str = ""


def _priority(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(where, f"must be an integer, not {value!r}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise PolicyError(where, f"{value} is outside {MIN_PRIORITY}..{MAX_PRIORITY}")
    return value


def policy_record_dict(selector: str, priority: int, policy: Policy) -> dict[str, Any]:
    """The stored form (validated: the selector parses, the priority fits)."""
    parse_selector(selector)
    return {"selector": selector, "priority": _priority(priority, "priority"), "policy": policy_to_dict(policy)}


def encode_policy_record(selector: str, priority: int, policy: Policy) -> bytes:
    return json.dumps(policy_record_dict(selector, priority, policy), separators=(",", ":")).encode()


def _json(value: bytes, where: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise PolicyError(where, f"invalid JSON: {e}") from None


def decode_policy_record(name: str, value: bytes, mod_revision: int = 0) -> PolicyRecord:
    """Validate the stored value of ``policies/<name>``; errors name ``policies/<name>.<field>``."""
    where = f"policies/{name}"
    check_policy_name(name)
    raw = _json(value, where)
    if not isinstance(raw, dict):
        raise PolicyError(where, f"must be a JSON object, not {type(raw).__name__}")
    unknown = sorted(set(raw) - RECORD_KEYS)
    if unknown:
        raise PolicyError(f"{where}.{unknown[0]}", "unknown field")
    text = raw.get("selector", "")
    if not isinstance(text, str):
        raise PolicyError(f"{where}.selector", f"must be a string, not {text!r}")
    try:
        selector = parse_selector(text)
        policy = policy_from_dict(raw.get("policy"))
    except PolicyError as e:
        raise PolicyError(f"{where}.{e.field}" if e.field else where, e.reason) from None
    priority = _priority(raw.get("priority", 0), f"{where}.priority")
    return PolicyRecord(name, selector, priority, policy, mod_revision, text)


# --- labels ---------------------------------------------------------------------


def encode_labels(labels: Mapping[str, str]) -> bytes:
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":")).encode()


def decode_labels(node: str, value: bytes) -> dict[str, str]:
    where = f"labels/{node}"
    raw = _json(value, where)
    if not isinstance(raw, dict):
        raise PolicyError(where, f"must be a JSON object, not {type(raw).__name__}")
    for k, v in raw.items():
        if not LABEL_KEY_RE.match(k):
            raise PolicyError(f"{where}.{k}", "invalid label key")
        if not isinstance(v, str) or not LABEL_VALUE_RE.match(v):
            raise PolicyError(f"{where}.{k}", f"invalid label value {v!r}")
    return dict(raw)


# --- status ---------------------------------------------------------------------


@dataclass(frozen=True)
class InterfaceMode:
    name: str
    mode: str


@dataclass(frozen=True)
class StatusRecord:
    """What one agent says it enforces (``status/<node>``, under its lease)."""

    node: str
    labels: Mapping[str, str] = field(default_factory=dict)
    synced_revision: int = 0  # etcd revision through which everything is seen and applied
    policy_hash: str = ""
    policies: tuple[tuple[str, int], ...] = ()  # selected (name, mod_revision), merge order
    applied_revision: int = 0  # the Datapath's local revision
    interfaces: tuple[InterfaceMode, ...] = ()
    last_error: str = ""
    version: str = ""
    updated: float = 0.0  # unix time


def status_to_dict(s: StatusRecord) -> dict[str, Any]:
    return {
        "node": s.node,
        "labels": dict(s.labels),
        "synced_revision": s.synced_revision,
        "policy_hash": s.policy_hash,
        "policies": [[n, r] for n, r in s.policies],
        "applied_revision": s.applied_revision,
        "interfaces": [{"name": i.name, "mode": i.mode} for i in s.interfaces],
        "last_error": s.last_error,
        "version": s.version,
        "updated": s.updated,
    }


def encode_status(s: StatusRecord) -> bytes:
    return json.dumps(status_to_dict(s), separators=(",", ":")).encode()


def decode_status(node: str, value: bytes) -> StatusRecord:
    where = f"status/{node}"
    raw = _json(value, where)
    if not isinstance(raw, dict):
        raise PolicyError(where, f"must be a JSON object, not {type(raw).__name__}")
    try:
        return StatusRecord(
            node=str(raw.get("node", node)),
            labels={str(k): str(v) for k, v in dict(raw.get("labels") or {}).items()},
            synced_revision=int(raw.get("synced_revision", 0)),
            policy_hash=str(raw.get("policy_hash", "")),
            policies=tuple((str(n), int(r)) for n, r in raw.get("policies") or ()),
            applied_revision=int(raw.get("applied_revision", 0)),
            interfaces=tuple(
                InterfaceMode(str(i["name"]), str(i["mode"])) for i in raw.get("interfaces") or ()
            ),
            last_error=str(raw.get("last_error", "")),
            version=str(raw.get("version", "")),
            updated=float(raw.get("updated", 0.0)),
        )
    except (TypeError, ValueError, KeyError) as e:
        raise PolicyError(where, f"malformed status record: {e!r}") from None
