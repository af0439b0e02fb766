"""Policy model validation and the YAML/JSON file format."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwd.errors import PolicyError
from fwd.policy import files
from fwd.policy.files import dump_policy_yaml, load_policy_file, load_policy_text
from fwd.policy.model import (
    Action,
    IPNetwork,
    Policy,
    PortRange,
    Rule,
    policy_from_dict,
    policy_to_dict,
)

# DESIGN.md §4, verbatim: the file format is a contract.
DESIGN_EXAMPLE = """\
default_action: allow            # allow | drop — what a packet gets when no rule matches
dry_run: false                   # true: nothing is dropped; would-be drops are counted and logged
rules:                           # ordered; the first matching rule decides
  - id: mgmt-ssh                 # unique, stable: counters and events follow it across updates
    action: allow                # allow | drop
    protocol: tcp                # tcp | udp | icmp | icmpv6 | sctp | 0-255; absent = any
    src: [203.0.113.0/24, "2001:db8::/32"]   # CIDRs or addresses; absent = any
    dst: [198.18.0.1]
    src_ports: ["1024-65535"]    # ports or ranges; only with tcp/udp/sctp
    dst_ports: [22, "8000-8080"]
    interfaces: ["eth*"]         # ingress interface name globs; absent = all managed
    log: true                    # emit an event when this rule decides (rate-limited)
  - id: drop-bad-net
    action: drop
    src: [198.51.100.0/24]
"""
DESIGN_MD = Path("/work/shared/DESIGN.md")


def rule(**fields: Any) -> dict[str, Any]:
    return {"id": "r", "action": "drop", **fields}


def error_of(raw: Any) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        policy_from_dict(raw)
    return info.value


def test_design_example_parses() -> None:
    policy = load_policy_text(DESIGN_EXAMPLE, "design.yaml")
    assert policy.default_action is Action.ALLOW and not policy.dry_run
    ssh, bad = policy.rules
    assert ssh == Rule(
        id="mgmt-ssh",
        action=Action.ALLOW,
        protocol=6,
        src=(ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32")),
        dst=(ipaddress.ip_network("198.18.0.1/32"),),
        src_ports=(PortRange(1024, 65535),),
        dst_ports=(PortRange(22, 22), PortRange(8000, 8080)),
        interfaces=("eth*",),
        log=True,
    )
    assert bad == Rule(
        id="drop-bad-net", action=Action.DROP, src=(ipaddress.ip_network("198.51.100.0/24"),)
    )


@pytest.mark.skipif(not DESIGN_MD.exists(), reason="shared DESIGN.md not present")
def test_design_example_is_still_the_one_in_design_md() -> None:
    block = re.search(
        r"A policy file, as users write it.*?```yaml\n(.*?)```",
        DESIGN_MD.read_text(),
        flags=re.DOTALL,
    )
    assert block is not None
    assert block.group(1) == DESIGN_EXAMPLE


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"rules": [rule(src=["10.0.0.300/8"])]}, "rules[0].src[0]", "invalid CIDR"),
        ({"rules": [rule(src=["10.0.0.0/8", "nope"])]}, "rules[0].src[1]", "invalid CIDR"),
        ({"rules": [rule(dst=[17])]}, "rules[0].dst[0]", "CIDR"),
        ({"rules": [rule(dst=["fe80::1%eth0"])]}, "rules[0].dst[0]", "zone"),
        ({"rules": [rule(protocol="tcp", dst_ports=[70000])]}, "rules[0].dst_ports[0]", "70000"),
        (
            {"rules": [rule(protocol="tcp", dst_ports=["1-70000"])]},
            "rules[0].dst_ports[0]",
            "70000",
        ),
        ({"rules": [rule(protocol="tcp", src_ports=["9-3"])]}, "rules[0].src_ports[0]", "empty"),
        ({"rules": [rule(protocol="tcp", src_ports=["²"])]}, "rules[0].src_ports[0]", "invalid"),
        (
            {"rules": [rule(protocol="tcp", src_ports=["1" * 5000])]},
            "rules[0].src_ports[0]",
            "invalid",
        ),
        ({"rules": [rule(protocol="tcp", src_ports=[True])]}, "rules[0].src_ports[0]", "invalid"),
        ({"rules": [rule(protocol="1" * 5000)]}, "rules[0].protocol", "protocol"),
        ({"rules": [rule(protocol="gre")]}, "rules[0].protocol", "unknown protocol"),
        ({"rules": [rule(protocol=256)]}, "rules[0].protocol", "0-255"),
        ({"rules": [rule(action="reject")]}, "rules[0].action", "unknown action"),
        ({"rules": [{"id": "x"}]}, "rules[0].action", "required"),
        ({"rules": [{"action": "drop"}]}, "rules[0].id", "required"),
        ({"rules": [rule(id="bad id")]}, "rules[0].id", "invalid rule id"),
        ({"rules": [rule(id=7)]}, "rules[0].id", "invalid rule id"),
        ({"default_action": "deny"}, "default_action", "unknown action"),
        ({"rules": [rule(id="a"), rule(id="b"), rule(id="a")]}, "rules[2].id", "rules[0]"),
        ({"rules": [rule(dst_ports=[22])]}, "rules[0].dst_ports", "tcp, udp or sctp"),
        ({"rules": [rule(protocol="icmp", src_ports=[22])]}, "rules[0].src_ports", "tcp, udp"),
        ({"rules": [rule(colour="red")]}, "rules[0].colour", "unknown field"),
        ({"rulez": []}, "rulez", "unknown field"),
        ({"rules": [rule(log="yes")]}, "rules[0].log", "true or false"),
        ({"dry_run": 1}, "dry_run", "true or false"),
        ({"rules": {"id": "x"}}, "rules", "must be a list"),
        ({"rules": 0}, "rules", "must be a list"),
        ({"rules": ["x"]}, "rules[0]", "mapping"),
        ({"rules": [rule(src={"a": 1})]}, "rules[0].src", "must be a list"),
        ({"rules": [rule(src=[])]}, "rules[0].src", "must not be empty"),
        ({"rules": [rule(interfaces=["eth 0"])]}, "rules[0].interfaces[0]", "glob"),
        ({"rules": [rule(src=["10.0.0.0/8"], dst=["2001:2::/48"])]}, "rules[0].dst", "family"),
    ],
)
def test_errors_name_the_field(raw: Any, field: str, words: str) -> None:
    err = error_of(raw)
    assert err.field == field
    assert words in err.reason
    assert str(err).startswith(f"{field}: ")


def test_a_policy_must_be_a_mapping() -> None:
    err = error_of(["rules"])
    assert err.field == "" and "mapping" in str(err)


def test_empty_and_null_documents_are_the_empty_policy() -> None:
    assert load_policy_text("") == Policy()
    assert load_policy_text("rules:\n") == Policy()
    # What `fwd policy apply` reads: a file that says nothing is refused by name...
    for text in ("", "# nothing yet\n", "{}", "rules:\n", "rules: []\nsets: {}\n"):
        with pytest.raises(PolicyError, match=r"^e\.yaml: the policy is empty .*--allow-empty"):
            load_policy_text(text, "e.yaml", allow_empty=False)
    # ...while one that says allow-all in so many words is not.
    assert load_policy_text("default_action: allow\n", allow_empty=False) == Policy()
    assert load_policy_text("dry_run: false\n", allow_empty=False) == Policy()


def test_lone_values_are_lists_of_one() -> None:
    p = policy_from_dict({"rules": [rule(src="10.0.0.1", protocol="udp", dst_ports=53)]})
    assert p.rules[0].src == (ipaddress.ip_network("10.0.0.1/32"),)
    assert p.rules[0].dst_ports == (PortRange(53, 53),)


def test_json_is_accepted() -> None:
    text = json.dumps({"default_action": "drop", "rules": [rule(protocol=17, dst_ports=["53"])]})
    p = load_policy_text(text)
    assert p.default_action is Action.DROP
    assert p.rules[0].protocol == 17 and p.rules[0].dst_ports == (PortRange(53, 53),)


def test_yaml_syntax_error_names_source_line_and_column() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text("rules:\n  - id: a\n    action: [drop\n", "edge.yaml")
    assert info.value.field == ""
    assert re.match(r"edge\.yaml: line \d+, column \d+: invalid YAML", str(info.value))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("rules: []\ndefault_action: drop\nrules: []\n", "line 3, column 1"),
        ("rules:\n  - {id: a, action: drop, action: allow}\n", "duplicate key 'action'"),
        ('{"rules": [], "rules": []}', "invalid JSON: duplicate key 'rules'"),
    ],
)
def test_duplicate_keys_are_refused(text: str, words: str) -> None:
    with pytest.raises(PolicyError, match="duplicate key") as info:
        load_policy_text(text, "dup.yaml")
    assert info.value.field == "" and words in str(info.value)


def test_merge_keys_may_override() -> None:
    text = "rules: [{<<: {id: a, action: drop}, action: allow}]"
    assert load_policy_text(text).rules[0].action is Action.ALLOW


def test_yaml_flow_mapping_is_not_mistaken_for_json() -> None:
    assert load_policy_text("{default_action: drop}").default_action is Action.DROP
    with pytest.raises(PolicyError, match="line 1, column"):
        load_policy_text('{"rules": [}')


def test_validation_errors_pass_through_loading() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text("rules:\n  - {id: a, action: drop, src: [10.1.2.3/33]}\n")
    assert info.value.field == "rules[0].src[0]"


def test_oversized_document_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_POLICY_BYTES", 64)
    with pytest.raises(PolicyError, match="size limit"):
        load_policy_text("# " + "x" * 100)
    assert load_policy_text("# short") == Policy()


def test_load_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(DESIGN_EXAMPLE)
    assert load_policy_file(path) == load_policy_text(DESIGN_EXAMPLE)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy_file(tmp_path / "missing.yaml")
    path.write_bytes(b"rules: [\xff]")
    with pytest.raises(PolicyError, match="UTF-8"):
        load_policy_file(path)
    path.write_text("rules:\n  - {id: a, action: drop, dst_ports: [1]}\n")
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert info.value.field == "rules[0].dst_ports"


def test_design_example_round_trips() -> None:
    policy = load_policy_text(DESIGN_EXAMPLE)
    text = dump_policy_yaml(policy)
    assert load_policy_text(text) == policy
    assert policy_from_dict(policy_to_dict(policy)) == policy


# --- round trip over random policies ------------------------------------------------

_NETS: list[IPNetwork] = [
    ipaddress.ip_network(n)
    for n in (
        "198.18.0.0/15",
        "198.18.7.1/32",
        "0.0.0.0/0",
        "2001:2::/48",
        "::/0",
        "::1/128",
        "::ffff:198.18.0.0/112",
    )
]
_IDS = st.text(alphabet="abcXYZ019_.:-", min_size=1, max_size=12).filter(lambda s: s[0].isalnum())
_GLOBS = st.sampled_from(["eth*", "veth[0-9]", "lo", "yes", "null", "*", "?x!", "1", "@x"])
_RANGES = st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(
    lambda t: PortRange(min(t), max(t))
)


@st.composite
def rules(draw: st.DrawFn, rule_id: str) -> Rule:
    protocol = draw(st.sampled_from([None, 1, 6, 17, 58, 132, 0, 47, 255]))
    ports = protocol in (6, 17, 132)
    v4: list[IPNetwork] = [n for n in _NETS if n.version == 4]
    fam = draw(st.sampled_from([_NETS, v4]))
    src = tuple(draw(st.lists(st.sampled_from(fam), max_size=3)))
    # The model refuses src/dst without a family in common.
    dst_ok = not src or any(n.version == 4 for n in src)
    return Rule(
        id=rule_id,
        action=draw(st.sampled_from(Action)),
        protocol=protocol,
        src=src,
        dst=tuple(draw(st.lists(st.sampled_from(v4), max_size=2))) if dst_ok else (),
        src_ports=tuple(draw(st.lists(_RANGES, max_size=3))) if ports else (),
        dst_ports=tuple(draw(st.lists(_RANGES, max_size=3))) if ports else (),
        interfaces=tuple(draw(st.lists(_GLOBS, max_size=2))),
        log=draw(st.booleans()),
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    ids = draw(st.lists(_IDS, unique=True, max_size=5))
    return Policy(
        default_action=draw(st.sampled_from(Action)),
        dry_run=draw(st.booleans()),
        rules=tuple(draw(rules(i)) for i in ids),
    )


@given(policies())
def test_yaml_round_trip(policy: Policy) -> None:
    assert load_policy_text(dump_policy_yaml(policy)) == policy
