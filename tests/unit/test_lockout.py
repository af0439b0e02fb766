"""Anti-lockout: which policies could drop management traffic."""

from __future__ import annotations

import ipaddress

import pytest

from fwd.errors import PolicyError
from fwd.policy.lockout import Service, check_lockout, parse_prefixes
from fwd.policy.model import policy_from_dict

MGMT = [ipaddress.ip_network("198.18.1.0/24")]
SSH = [Service.parse("tcp/22")]


def ok(raw: dict[str, object]) -> None:
    check_lockout(policy_from_dict(raw), MGMT, SSH)


def refused(raw: dict[str, object], field: str) -> None:
    with pytest.raises(PolicyError) as info:
        check_lockout(policy_from_dict(raw), MGMT, SSH)
    assert info.value.field == field, info.value


def test_default_allow_with_unrelated_drops_is_fine() -> None:
    ok({"rules": [{"id": "a", "action": "drop", "protocol": "udp"},
                  {"id": "b", "action": "drop", "src": ["198.18.2.0/24"]},
                  {"id": "c", "action": "drop", "protocol": "tcp", "dst_ports": [80, "443-444"]},
                  {"id": "v6", "action": "drop", "src": ["2001:2::/48"]}]})


def test_a_drop_that_could_match_is_refused() -> None:
    refused({"rules": [{"id": "a", "action": "drop", "src": ["198.18.0.0/15"]}]}, "rules[0]")
    refused({"rules": [{"id": "ok", "action": "drop", "protocol": "udp"},
                       {"id": "x", "action": "drop", "protocol": "tcp", "dst_ports": ["1-1024"]}]},
            "rules[1]")
    # A destination constraint does not rule it out: the agent's own addresses are unknown.
    refused({"rules": [{"id": "d", "action": "drop", "dst": ["198.19.0.1"]}]}, "rules[0]")
    # Partial overlap of the management prefix is enough.
    refused({"rules": [{"id": "p", "action": "drop", "src": ["198.18.1.128/25"]}]}, "rules[0]")


def test_default_drop_needs_a_covering_allow() -> None:
    refused({"default_action": "drop"}, "default_action")
    ok({"default_action": "drop",
        "rules": [{"id": "ssh", "action": "allow", "protocol": "tcp", "src": ["198.18.0.0/15"],
                   "dst_ports": [22]}]})
    # An allow that covers only part of the prefix, or adds a constraint, does not count.
    refused({"default_action": "drop",
             "rules": [{"id": "half", "action": "allow", "src": ["198.18.1.0/25"]}]},
            "default_action")
    refused({"default_action": "drop",
             "rules": [{"id": "if", "action": "allow", "interfaces": ["eth0"]}]},
            "default_action")


def test_an_allow_before_the_drop_protects() -> None:
    ok({"rules": [{"id": "ssh", "action": "allow", "protocol": "tcp", "dst_ports": [22]},
                  {"id": "all", "action": "drop"}]})
    refused({"rules": [{"id": "all", "action": "drop"},
                       {"id": "ssh", "action": "allow", "protocol": "tcp", "dst_ports": [22]}]},
            "rules[0]")


def test_dry_run_never_locks_out() -> None:
    ok({"default_action": "drop", "dry_run": True})


def test_settings_parsing() -> None:
    assert Service.parse("tcp/22") == Service(6, 22)
    assert Service.parse("UDP/161") == Service(17, 161)
    for bad in ("tcp", "icmp/1", "tcp/70000", "x/1"):
        with pytest.raises(ValueError):
            Service.parse(bad)
    assert parse_prefixes(["198.18.1.7/24"]) == [ipaddress.ip_network("198.18.1.0/24")]
    with pytest.raises(ValueError, match="nope"):
        parse_prefixes(["nope"])


def test_sets_are_looked_into() -> None:
    sets = {"bl": {"type": "prefix", "elements": ["198.51.100.0/24", "2001:db8::/32"]},
            "mgmt": {"type": "prefix", "elements": ["198.18.0.0/16"]},
            "ssh": {"type": "port", "elements": [22]},
            "web": {"type": "port", "elements": [80, "443-444"]}}
    # A blocklist that does not contain the management prefix is fine.
    ok({"sets": sets, "rules": [{"id": "bl", "action": "drop", "src_set": "bl"}]})
    ok({"sets": sets, "rules": [{"id": "w", "action": "drop", "protocol": "tcp",
                                 "dst_port_set": "web"}]})
    refused({"sets": sets, "rules": [{"id": "m", "action": "drop", "src_set": "mgmt"}]},
            "rules[0]")
    refused({"sets": sets, "rules": [{"id": "s", "action": "drop", "protocol": "tcp",
                                      "dst_port_set": "ssh"}]}, "rules[0]")
    # Sets can cover, too.
    ok({"sets": sets, "default_action": "drop",
        "rules": [{"id": "allow", "action": "allow", "protocol": "tcp", "src_set": "mgmt",
                   "dst_port_set": "ssh"}]})
    refused({"sets": sets, "default_action": "drop",
             "rules": [{"id": "allow", "action": "allow", "src_set": "bl"}]}, "default_action")
