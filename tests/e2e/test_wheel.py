"""A real package: ``python -m build`` -> a wheel that works installed outside the checkout.

The wheel is built from the sdist (what ``python -m build`` does), so both are checked:
the sdist must carry the BPF sources, the wheel the compiled object and the generated
proto code. It is installed into a fresh venv in a temporary directory and the demo's
policy runs end to end in namespaces with that installed ``fwd`` (contrib/demo.sh with
FWD_BIN), on a fresh bpffs (a private mount namespace with /sys/fs/bpf unmounted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agentproc import ROOT
from tests.netns import require_root

pytestmark = pytest.mark.root

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def run(argv: list[str], timeout: float = 600, **kw: object) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return str(proc.stdout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_root()
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    (whl,) = out.glob(f"fwd-{VERSION}-*.whl")
    (sdist,) = out.glob(f"fwd-{VERSION}.tar.gz")
    assert sdist.stat().st_size > 0
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv outside the checkout with only the wheel (and its dependencies)."""
    env = tmp_path_factory.mktemp("venv") / "fwd"
    assert ROOT not in env.parents
    run([sys.executable, "-m", "venv", str(env)])
    run([str(env / "bin" / "pip"), "install", "-q", str(wheel)], cwd="/")
    yield env


def test_wheel_carries_object_and_generated_code(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "fwd/fwd.bpf.o" in names
    assert "fwd/api/gen/fwd/v1/__init__.py" in names
    assert "fwd/api/gen/py.typed" in names
    obj = zipfile.ZipFile(wheel).read("fwd/fwd.bpf.o")
    assert obj[:4] == b"\x7fELF" and b".BTF" in obj  # BTF: CO-RE-ready, loads on any kernel


def test_installed_fwd_uses_its_own_files(venv: Path) -> None:
    # cwd=/ and no PYTHONPATH: nothing of the checkout can be imported by accident.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FWD_BPF_OBJECT")}
    assert run([str(venv / "bin" / "fwd"), "--version"], cwd="/", env=env).strip() == (
        f"fwd {VERSION}"
    )
    out = run(
        [str(venv / "bin" / "python"), "-c",
         "import json, fwd; from fwd.kernel.objpath import default_object_path; "
         "print(json.dumps([fwd.__file__, str(default_object_path())]))"],
        cwd="/", env=env,
    )
    module, obj = json.loads(out)
    site = str(venv / "lib")
    assert module.startswith(site) and obj.startswith(site), (module, obj)
    assert obj.endswith("fwd/fwd.bpf.o")
    # contrib/fwd.service runs the entry point of a venv at /opt/fwd made the same way.
    unit = (ROOT / "contrib" / "fwd.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    binary = Path(exec_start.removeprefix("ExecStart=").split()[0])
    assert binary.parent.parent == Path("/opt/fwd")
    assert (venv / binary.relative_to("/opt/fwd")).is_file()


def test_installed_fwd_runs_the_demo(venv: Path) -> None:
    """contrib/demo.sh's policy, end to end, with the installed agent and CLI."""
    fresh = "for _ in 1 2 3 4; do mountpoint -q /sys/fs/bpf && umount /sys/fs/bpf; done; "
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FWD_BPF_OBJECT")}
    env |= {"FWD_DEMO_SKIP_SETUP": "1", "FWD_BIN": str(venv / "bin" / "fwd")}
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c",
         fresh + f"exec bash {ROOT / 'contrib' / 'demo.sh'} --once"],
        capture_output=True, text=True, timeout=180, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert 'from A: {"9998": 10, "9999": 0}' in proc.stdout
    assert "drop-a-udp-9999  drop         10" in proc.stdout
    # The agent that ran is the installed one, with the wheel's object.
    objects = [json.loads(line.split("agent: ", 1)[1]) for line in proc.stderr.splitlines()
               if '"bpf_object"' in line]
    assert len(objects) == 1 and objects[0]["path"].startswith(str(venv / "lib")), objects
    assert not [line for line in proc.stderr.splitlines() if '"level": "error"' in line]
