"""The operator's contract (issue 16, Why 4-6), item by item, without an agent where possible."""

from __future__ import annotations

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
