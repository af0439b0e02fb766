"""Label selectors: parsing (errors name the bad part) and matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwd.cluster.selector import SelectorError, parse_labels, parse_selector
from fwd.errors import PolicyError

EDGE_A = {"role": "edge", "zone": "a"}


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {}, True),
        ("   ", EDGE_A, True),
        ("role=edge", EDGE_A, True),
        ("role==edge", EDGE_A, True),
        ("role=core", EDGE_A, False),
        ("role!=core", EDGE_A, True),
        ("role!=edge", EDGE_A, False),
        ("gpu!=yes", EDGE_A, True),  # absent key: != holds (Kubernetes)
        ("zone in (a,b)", EDGE_A, True),
        ("zone in (b, c)", EDGE_A, False),
        ("zone notin (b,c)", EDGE_A, True),
        ("zone notin (a)", EDGE_A, False),
        ("gpu notin (a)", EDGE_A, True),
        ("gpu in (a)", EDGE_A, False),
        ("role", EDGE_A, True),
        ("gpu", EDGE_A, False),
        ("!gpu", EDGE_A, True),
        ("!role", EDGE_A, False),
        ("role=edge,zone!=b", EDGE_A, True),
        ("role=edge,zone!=a", EDGE_A, False),
        ("role=edge, zone in (a,b), !gpu", EDGE_A, True),
        ("example.com/team=net", {"example.com/team": "net"}, True),
        ("role=", {"role": ""}, True),
    ],
)
def test_matching(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("role=edge,,zone=a", "requirement 2 is empty"),
        ("role=edge,", "requirement 2 is empty"),
        ("role in (a,b", "unbalanced"),
        ("role in ()", "empty value list"),
        ("role=ed ge", "requirement 1 'role=ed ge'"),
        ("-bad=x", "invalid label key '-bad'"),
        ("role=edge,zone=a b", "requirement 2 'zone=a b'"),
        ("role in (a,b c)", "invalid label value 'b c'"),
        ("role=@x", "requirement 1"),
    ],
)
def test_bad_selectors_name_the_part(text: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)
    assert info.value.field == "selector"


_keys = st.sampled_from(["role", "zone", "tier", "gpu"])
_values = st.sampled_from(["a", "b", "edge", "core"])
_labels = st.dictionaries(_keys, _values, max_size=4)


@st.composite
def _requirement(draw: st.DrawFn) -> tuple[str, object]:
    key = draw(_keys)
    kind = draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!"]))
    if kind in ("=", "!="):
        v = draw(_values)
        return f"{key}{kind}{v}", (kind, key, {v})
    if kind in ("in", "notin"):
        vs = draw(st.sets(_values, min_size=1, max_size=3))
        return f"{key} {kind} ({','.join(sorted(vs))})", (kind, key, vs)
    return (key if kind == "exists" else f"!{key}"), (kind, key, set())


def _reference(req: tuple[str, str, set[str]], labels: dict[str, str]) -> bool:
    kind, key, vs = req
    if kind == "exists":
        return key in labels
    if kind == "!":
        return key not in labels
    if kind in ("=", "in"):
        return labels.get(key) in vs
    return labels.get(key) not in vs


@given(st.lists(_requirement(), max_size=4), _labels)
def test_matching_agrees_with_a_reference(reqs: list[tuple[str, object]], labels: dict[str, str]) -> None:
    text = ",".join(t for t, _ in reqs)
    expected = all(_reference(r, labels) for _, r in reqs)  # type: ignore[arg-type]
    selector = parse_selector(text)
    assert selector.matches(labels) is expected
    # The canonical string form parses back to the same selector.
    assert parse_selector(str(selector)) == selector


def test_parse_labels() -> None:
    assert parse_labels(["role=edge", "zone = a", "empty="]) == {"role": "edge", "zone": "a", "empty": ""}
    with pytest.raises(PolicyError, match=r"labels\[1\]: 'zone' is not key=value"):
        parse_labels(["role=edge", "zone"])
    with pytest.raises(PolicyError, match=r"labels\[0\]: invalid label value"):
        parse_labels(["role=a b"])
