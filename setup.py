"""Build hook: compile the XDP program into the wheel (everything else is in pyproject.toml).

``python -m build`` (or ``pip wheel``/``pip install .``) runs ``make -C bpf`` with clang
into a temporary directory and ships the object as ``fwd/fwd.bpf.o``, package data that
the agent finds with importlib.resources (fwd/kernel/objpath.py). The object carries BTF
(``-g``) and touches no kernel struct, so one build loads on every kernel fwd supports.
An editable install (``pip install -e``, contrib/setup.sh) builds nothing here: the
checkout's ``bpf/build/fwd.bpf.o`` from ``make -C bpf`` is used instead.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
OBJECT = "fwd.bpf.o"


class BuildWithBpf(build_py):
    """build_py, plus the compiled XDP object as package data of ``fwd``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        with tempfile.TemporaryDirectory(prefix="fwd-bpf-") as tmp:
            # One recipe for the checkout and the wheel: bpf/Makefile (clang -O2 -g -Werror).
            subprocess.run(["make", "-s", "-C", str(HERE / "bpf"), f"BUILD={tmp}"], check=True)
            target = Path(self.build_lib) / "fwd" / OBJECT
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / OBJECT, target)


setup(cmdclass={"build_py": BuildWithBpf})
