"""fwd/api/statswire.py writes and reads what betterproto2 does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fwd.api import convert, statswire
from fwd.api.gen.fwd import v1 as pb
from fwd.messages import RuleStats

counts = st.integers(0, 2**64 - 1)
stats = st.builds(RuleStats, st.text(max_size=40), st.sampled_from(["allow", "drop", ""]),
                  counts, counts, counts, counts)


@given(st.lists(stats, max_size=20), st.sampled_from(["", "10", "123456"]))
def test_encoding_equals_betterproto2_and_decodes_back(
    rows: list[RuleStats], token: str
) -> None:
    data = statswire.encode_page(rows, token)
    reference = pb.ListRuleStatsResponse(
        stats=[convert.rule_stats_to_proto(r) for r in rows], next_page_token=token)
    assert data == bytes(reference)
    assert pb.ListRuleStatsResponse.parse(data) == reference
    page = statswire.DecodedStatsPage.FromString(data)
    assert page.next_page_token == token
    assert [(s.rule_id, s.action, s.packets, s.bytes, s.would_drop_packets, s.would_drop_bytes)
            for s in page.stats] == [
        (r.rule_id, int(convert.rule_stats_to_proto(r).action), r.packets, r.bytes,
         r.would_drop_packets, r.would_drop_bytes) for r in rows]


def test_unknown_fields_are_skipped_and_truncation_refused() -> None:
    extra = bytes(pb.ListRuleStatsResponse(stats=[pb.RuleStats(rule_id="a", packets=3)]))
    data = extra + b"\x18\x05" + b"\x22\x02hi"  # field 3 varint, field 4 bytes: unknown
    page = statswire.DecodedStatsPage.FromString(data)
    assert [(s.rule_id, s.packets) for s in page.stats] == [("a", 3)]
    try:
        statswire.DecodedStatsPage.FromString(extra[:-1])
    except ValueError:
        pass
    else:
        raise AssertionError("a truncated page was accepted")
