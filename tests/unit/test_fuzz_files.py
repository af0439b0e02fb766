"""The policy file loader on arbitrary input: a Policy or a PolicyError, nothing else."""

from __future__ import annotations

import json
import os

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fwd.errors import PolicyError
from fwd.policy.files import load_policy_text
from fwd.policy.model import Policy

EXAMPLES = int(os.environ.get("FWD_FUZZ_EXAMPLES", "1000"))

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True), st.text(max_size=30),
    st.sampled_from(["allow", "drop", "tcp", "udp", "198.18.0.0/15", "2001:2::/48", "1-65535",
                     "rules", "id", "src", "dst_ports", "default_action", "dry_run"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["rules", "id", "action", "protocol", "src", "dst",
                                       "src_ports", "dst_ports", "interfaces", "log",
                                       "default_action", "dry_run"]) | st.text(max_size=8),
                      children, max_size=6),
    max_leaves=30,
)


def _load(text: str) -> None:
    try:
        assert isinstance(load_policy_text(text, "fuzz.yaml"), Policy)
    except PolicyError as exc:
        assert str(exc)  # the message says what was wrong


@settings(max_examples=EXAMPLES)
@given(st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    _load(text)


@settings(max_examples=EXAMPLES)
@given(VALUES)
def test_arbitrary_documents(value: object) -> None:
    _load(yaml.safe_dump(value))
    try:
        _load(json.dumps(value))
    except ValueError:
        pass  # not JSON-encodable (nan is, 2**70 is): nothing to load
