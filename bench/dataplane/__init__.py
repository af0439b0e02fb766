"""bench/dataplane: per-packet cost and veth drop rate of fwd against its anchors (issue 3)."""
