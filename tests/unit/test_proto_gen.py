"""The committed generated code is what contrib/gen-proto.sh makes from proto/ today."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "fwd" / "api" / "gen"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    pytest.importorskip("betterproto2_compiler")
    out = tmp_path / "gen"
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(
        ["bash", str(REPO / "contrib" / "gen-proto.sh"), str(out)],
        check=True,
        env=env,
        cwd=tmp_path,  # the script must not depend on where it is run from
        capture_output=True,
    )
    fresh, committed = _tree(out), _tree(COMMITTED)
    assert "fwd/v1/__init__.py" in fresh
    assert sorted(fresh) == sorted(committed), "run contrib/gen-proto.sh and commit fwd/api/gen"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"fwd/api/gen is out of date ({stale}): run contrib/gen-proto.sh and commit"


def test_generated_package_is_importable() -> None:
    from fwd.api.gen.fwd import v1 as pb

    message = pb.ApplyPolicyRequest(policy=pb.Policy(dry_run=True), expect_revision=0)
    again = pb.ApplyPolicyRequest.parse(bytes(message))
    assert again.expect_revision == 0  # proto3 optional: presence survives the wire
    assert again.policy is not None and again.policy.dry_run
    assert pb.ApplyPolicyRequest.parse(b"").expect_revision is None
