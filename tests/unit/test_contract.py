"""The operator's contract (issue 16, Why 4-6), item by item, without an agent where possible."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwd.errors import PolicyError
from fwd.policy.model import policy_from_dict


@pytest.mark.parametrize(
    ("where", "raw", "field", "network", "address"),
    [
        ("rule src", {"rules": [{"id": "a", "action": "drop", "src": ["198.18.5.7/24"]}]},
         "rules[0].src[0]", "198.18.5.0/24", "198.18.5.7"),
        ("rule dst v6", {"rules": [{"id": "a", "action": "drop", "dst": ["2001:2::1/48"]}]},
         "rules[0].dst[0]", "2001:2::/48", "2001:2::1"),
        ("set element", {"sets": {"bl": {"type": "prefix", "elements": ["198.18.0.0/32",
                                                                          "198.18.5.7/24"]}}},
         "sets.bl.elements[1]", "198.18.5.0/24", "198.18.5.7"),
    ],
)
def test_host_bits_in_a_cidr_are_refused_naming_the_field(
    where: str, raw: dict[str, object], field: str, network: str, address: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_from_dict(raw)
    assert caught.value.field == field, where
    assert "host bits" in str(caught.value) and network in str(caught.value)
    assert repr(address) in str(caught.value)


# --- exit codes (Why 1, 6): 0 done, 1 refused, 2 usage, 3 unreachable, 4 outcome unknown ---

import anyio  # noqa: E402

from fwd.messages import ApplyPolicy  # noqa: E402
from fwd.testing import serve_api  # noqa: E402
from tests.unit.test_cli import fwd_cli, sock_path, write_policy  # noqa: E402


@pytest.mark.asyncio
async def test_exit_codes_tell_refused_usage_unreachable_and_unknown_apart(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)
    policy = write_policy(tmp_path)
    assert (await fwd_cli("policy", "apply", policy, "--socket", sock))[0] == 3  # no agent
    assert (await fwd_cli("policy", "apply", "--socket", sock))[0] == 2  # usage
    async with serve_api(sock) as harness:
        assert (await fwd_cli("policy", "apply", policy, "--socket", sock))[0] == 0
        code, _, err = await fwd_cli("policy", "apply", policy, "--socket", sock,
                                     "--expect-revision", "7")
        assert code == 1 and "FAILED_PRECONDITION" in err
        # The apply is sent and never answered: the outcome is unknown, and the message
        # names the revision enforced before it (what a script checks next).
        harness.datapath.silent_to = (ApplyPolicy,)
        code, out, err = await fwd_cli("policy", "apply", policy, "--socket", sock,
                                       "--timeout", "0.3")
    assert (code, out) == (4, "")
    assert err.startswith("fwd: OUTCOME UNKNOWN: the apply was sent but no answer came within "
                          "0.3s; revision 1 was enforced before it"), err
    assert "revision 2 or later" in err


@pytest.mark.asyncio
async def test_agent_stops_during_a_change_is_outcome_unknown(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)
    results: list[tuple[int, str, str]] = []

    async def apply() -> None:
        results.append(await fwd_cli("policy", "apply", write_policy(tmp_path), "--socket", sock))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, serve_api(sock) as harness:
            harness.datapath.silent_to = (ApplyPolicy,)
            tg.start_soon(apply)
            while not any(isinstance(c, ApplyPolicy) for c in harness.datapath.received):
                await anyio.sleep(0.01)
    [(code, _, err)] = results
    assert code == 4 and "OUTCOME UNKNOWN" in err and "revision 0 was enforced" in err, err


def test_apply_waits_by_the_policy_size() -> None:
    import argparse

    from fwd.cli.policy import apply_deadline
    from fwd.policy.model import Policy, Rule, Action

    small = argparse.Namespace(policy=Policy())
    big = argparse.Namespace(policy=Policy(rules=tuple(Rule(f"r{i}", Action.DROP)
                                                       for i in range(100_000))))
    assert 10 <= apply_deadline(small) < 60 and apply_deadline(big) >= 100


# --- policy files (Why 3, 5): strict JSON, format by name, output that applies back ---

import io  # noqa: E402

from fwd.policy.files import dump_policy_yaml, load_policy_file  # noqa: E402
from fwd.policy.model import policy_to_dict  # noqa: E402


def test_a_json_file_is_strict_json(tmp_path: Path) -> None:
    broken = tmp_path / "p.json"
    broken.write_text("{default_action: drop, rules: [{id: x, action: drop}]}\n")  # YAML, not JSON
    with pytest.raises(PolicyError, match=r"p.json: line 1, column 2: invalid JSON"):
        load_policy_file(broken)
    (tmp_path / "p.yaml").write_text(broken.read_text())
    assert len(load_policy_file(tmp_path / "p.yaml").rules) == 1
    (tmp_path / "p.yml").write_text(broken.read_text())
    assert len(load_policy_file(tmp_path / "p.yml").rules) == 1
    other = tmp_path / "policy.txt"
    other.write_text('{"default_action": "drop"}')
    with pytest.raises(PolicyError, match=r"policy.txt: the name does not say the format.*--format"):
        load_policy_file(other)
    assert load_policy_file(other, "json").default_action.value == "drop"


def test_stdin_is_json_unless_told_yaml() -> None:
    yaml_text = b"default_action: drop\n"
    with pytest.raises(PolicyError, match="<stdin>: line 1, column 1: invalid JSON"):
        load_policy_file("-", stdin=io.BytesIO(yaml_text))
    assert load_policy_file("-", "yaml", stdin=io.BytesIO(yaml_text)).default_action.value == "drop"


def test_output_applies_back_with_numbers_as_numbers() -> None:
    import json

    raw = {"sets": {"web": {"type": "port", "elements": [443, "8000-8080"]}},
           "rules": [{"id": "a", "action": "drop", "protocol": "tcp", "src_ports": ["1024-65535"],
                      "dst_ports": [22, "9998-9999"]}]}
    policy = policy_from_dict(raw)
    doc = policy_to_dict(policy)
    assert doc["rules"][0]["dst_ports"] == [22, "9998-9999"]
    assert doc["sets"]["web"]["elements"] == [443, "8000-8080"]
    assert "dst_ports: [22, 9998-9999]" in dump_policy_yaml(policy)
    # What 'fwd policy get -o json' prints (revision, policy, adoption) applies as is.
    envelope = json.dumps({"revision": 3, "policy": doc, "adoption": {"maps_reused": []}})
    assert load_policy_file("-", stdin=io.BytesIO(envelope.encode())) == policy
    assert load_policy_file("-", "yaml", stdin=io.BytesIO(dump_policy_yaml(policy).encode())) == policy


# --- conventions (Why 6) ---

import subprocess  # noqa: E402
import sys  # noqa: E402

from fwd.cli.main import main  # noqa: E402


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("fwd ")


def test_bash_completion_is_generated_from_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    text = capsys.readouterr().out
    probe = text + """
t() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=(); _fwd_complete
      echo "${COMPREPLY[*]}"; }
t fwd pol; t fwd policy ''; t fwd --socket /x sets show -o ''; t fwd stats --ti
"""
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "policy", "apply confirm diff get history rollback", "text json", "--timeout"]
    assert main(["completion", "zsh"]) == 0
    assert "bashcompinit" in capsys.readouterr().out


@pytest.mark.asyncio
async def test_bad_rule_text_is_one_line_without_usage_or_trace(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)  # no agent: the rule is refused before connecting
    code, out, err = await fwd_cli("rules", "add", "{id: x, action: [drop", "--socket", sock)
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1 and err.startswith("fwd: rule: line 1, column ")
    assert "invalid YAML" in err and "usage:" not in err and "yaml." not in err
    code, _, err = await fwd_cli("rules", "add", "{id: x, action: dro}", "--socket", sock)
    assert code == 1 and err == "fwd: rule.action: unknown action 'dro' (allow | drop)\n"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["policy", "rollback", "abc"], "a revision is a number (see 'fwd policy history'), not 'abc'"),
        (["events", "--count", "-1"], "--count: must be 1.."),
        (["events", "--count", "0"], "--count: must be 1.."),
        (["events", "--duration", "0"], "--duration: must be positive"),
        (["events", "--duration", "soon"], "--duration: not a number: 'soon'"),
    ],
)
def test_bad_values_are_usage_errors_that_say_what(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert says in capsys.readouterr().err


@pytest.mark.asyncio
async def test_events_refuse_an_unknown_rule_like_an_unknown_interface(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)
    async with serve_api(sock):
        assert (await fwd_cli("policy", "apply", write_policy(tmp_path), "--socket", sock))[0] == 0
        for flag, value, says in (("--rule", "nosuch", "rule_ids: no rule 'nosuch'"),
                                  ("--iface", "nosuch", "interfaces: no interface 'nosuch'")):
            code, _, err = await fwd_cli("events", flag, value, "--socket", sock)
            assert code == 1 and err.startswith("fwd: INVALID_ARGUMENT: ") and says in err, err


def test_event_text_has_one_case_and_brackets_ipv6() -> None:
    from fwd.api.gen.fwd import v1 as pb
    from fwd.cli.status import _event_line

    v6 = pb.Event(dropped=True, rule_id="r", src="2001:2::1", src_port=5353, dst="2001:2::2",
                  dst_port=53, protocol=17, interface="eth0", length=80)
    assert " drop r proto 17 [2001:2::1]:5353 > [2001:2::2]:53 len 80" in _event_line(v6, "text")
    would = pb.Event(would_drop=True, action=pb.Action.DROP, rule_id="r", src="198.18.0.1",
                     src_port=1, dst="198.18.0.2", dst_port=2, protocol=6, interface="eth0")
    assert " would-drop r proto 6 198.18.0.1:1 > 198.18.0.2:2 " in _event_line(would, "text")
    allowed = pb.Event(action=pb.Action.ALLOW, rule_id="ok", src="198.18.0.1", dst="198.18.0.2")
    assert " allow ok " in _event_line(allowed, "text")


@pytest.mark.asyncio
async def test_policy_diff_has_json(tmp_path: Path) -> None:
    import json

    sock = sock_path(tmp_path)
    async with serve_api(sock):
        assert (await fwd_cli("policy", "apply", write_policy(tmp_path), "--socket", sock))[0] == 0
        changed = tmp_path / "changed.yaml"
        changed.write_text("default_action: allow\nrules:\n"
                           "  - {id: drop-bad-net, action: drop, src: [198.19.7.0/24]}\n")
        code, out, _ = await fwd_cli("policy", "diff", str(changed), "-o", "json", "--socket", sock)
    assert code == 0
    doc = json.loads(out)
    assert doc["revision"] == 1
    assert {"change": "changed", "field": "default_action", "from": "drop", "to": "allow"} in doc["changes"]
    assert {"change": "moved", "rule": "drop-bad-net", "from": 1, "to": 0} in doc["changes"]
    assert any(c["change"] == "removed" and c["rule"] == "mgmt-ssh" for c in doc["changes"])


from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests import strategies as S  # noqa: E402


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(S.policy_dict(max_rules=8))
def test_yaml_output_reads_back_equal(raw: dict[str, object]) -> None:
    from fwd.policy.files import load_policy_text

    try:
        policy = policy_from_dict(raw)
    except PolicyError:
        return
    assert load_policy_text(dump_policy_yaml(policy), fmt="yaml") == policy


@pytest.mark.parametrize("text", ["::/0", "::1/128", "::ffff:198.18.0.0/112", "y", "No", "NULL",
                                  "1:2", "0x1F", "1e3", "2002-12-14", "~", "-1", "on"])
def test_yaml_output_quotes_what_yaml_would_read_otherwise(text: str) -> None:
    import yaml

    from fwd.policy.files import _scalar

    assert yaml.safe_load(f"[{_scalar(text)}]") == [text]
