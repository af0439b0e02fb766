"""The failsafe's settings and its apply-time checks (the kernel side: tests/bpf/test_failsafe.py)."""

from __future__ import annotations

import ipaddress

import pytest

from fwd.policy import failsafe
from fwd.settings import Settings
from fwd.policy.lockout import LockoutError
from fwd.policy.model import policy_from_dict


def test_parse_entries_and_errors() -> None:
    got = failsafe.parse(" tcp/22, udp/53,tcp/sport:2379@2001:2::5 ")
    assert [str(e) for e in got] == ["tcp/22", "udp/53", "tcp/sport:2379@2001:2::5"]
    assert got[2].address == ipaddress.ip_address("2001:2::5") and got[2].source_port
    assert failsafe.parse("") == () and failsafe.parse(" , ") == ()
    for bad, says in [("icmp/22", "tcp, udp or sctp"), ("tcp/0", "1-65535"), ("tcp/ssh", "1-65535"),
                      ("tcp/22@198.18.0.1", "goes with sport"), ("tcp/sport:1@nohost", "not an IP")]:
        with pytest.raises(failsafe.FailsafeError, match=says):
            failsafe.parse(bad)


def test_entries_add_etcd_replies_and_the_listener_unless_off() -> None:
    s = Settings(etcd_endpoints=("http://198.18.5.5:2379", "http://[2001:2::5]:12379"),
                 listen="198.18.0.1:7443")
    assert [str(e) for e in failsafe.entries(s)] == [
        "tcp/22", "tcp/sport:2379@198.18.5.5", "tcp/sport:12379@2001:2::5", "tcp/7443"]
    assert failsafe.entries(Settings(failsafe=("",), etcd_endpoints=s.etcd_endpoints)) == ()
    many = ",".join(f"tcp/{p}" for p in range(1, 18))
    with pytest.raises(failsafe.FailsafeError, match="at most 16"):
        failsafe.entries(Settings(failsafe=(many,)))


def check(settings: Settings, raw: dict[str, object]) -> None:
    guard = failsafe.guard(settings, failsafe.entries(settings))
    if guard is not None:
        guard(policy_from_dict(raw))


def test_guard_with_the_failsafe_on() -> None:
    on = Settings()
    check(on, {"default_action": "drop"})  # the failsafe keeps tcp/22: nothing to refuse
    check(on, {"rules": [{"id": "r", "action": "drop", "protocol": "tcp"}]})
    check(on, {"rules": [{"id": "r", "action": "drop", "protocol": "tcp", "dst_ports": ["1-100"]}]})
    check(on, {"dry_run": True,
               "rules": [{"id": "r", "action": "drop", "protocol": "tcp", "dst_ports": [22]}]})
    with pytest.raises(LockoutError, match=r"rules\[1\].*drops tcp/22.*--failsafe 'tcp/22'.*--force"):
        check(on, {"rules": [{"id": "ok", "action": "allow"},
                             {"id": "r", "action": "drop", "protocol": "tcp", "dst_ports": [22, 23]}]})


def test_guard_with_the_failsafe_off_protects_tcp22_from_anywhere() -> None:
    off = Settings(failsafe=("",))
    with pytest.raises(LockoutError, match=r"default_action.*tcp/22 from 0.0.0.0/0.*--force"):
        check(off, {"default_action": "drop"})
    check(off, {"default_action": "drop", "rules": [
        {"id": "ssh", "action": "allow", "protocol": "tcp", "dst_ports": [22]}]})
    # --mgmt-prefix narrows it to where the operators are.
    narrow = Settings(failsafe=("",), mgmt_prefixes=("198.18.1.0/24",))
    check(narrow, {"default_action": "drop", "rules": [
        {"id": "ssh", "action": "allow", "protocol": "tcp", "src": ["198.18.1.0/24"],
         "dst_ports": [22]}]})
