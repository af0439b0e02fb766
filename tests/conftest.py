"""Test-wide settings: skip root-only tests without root; hypothesis uses the "ci" profile."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("FWD_HYPOTHESIS_EXAMPLES", "200")),
    deadline=None,  # shared 2-core VM: timing-based flakiness is not a finding
)
settings.load_profile("ci")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``root`` unless running as root (BPF, namespaces, XDP need it)."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (BPF, network namespaces)")
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)
