"""Where the compiled data-plane object lives."""

from __future__ import annotations

import errno
import os
from importlib import resources
from pathlib import Path

from fwd.errors import BpfError

ENV_VAR = "FWD_BPF_OBJECT"
PACKAGED = "fwd.bpf.o"
"""The object's name as package data of ``fwd`` (setup.py's build hook puts it there)."""


def packaged_object() -> Path | None:
    """The object shipped inside the installed package (a wheel), or None (a checkout)."""
    res = resources.files("fwd").joinpath(PACKAGED)
    # pip installs wheels unpacked, so the resource is a real file libbpf can open.
    return Path(str(res)) if isinstance(res, Path) and res.is_file() else None


def checkout_object() -> Path:
    """``<repo>/bpf/build/fwd.bpf.o``: what ``make -C bpf`` builds in a checkout."""
    return Path(__file__).resolve().parents[2] / "bpf/build/fwd.bpf.o"


def default_object_path() -> Path:
    """The fwd XDP object: ``$FWD_BPF_OBJECT`` if set, else the one in the installed package
    (importlib.resources), else the checkout's ``bpf/build/fwd.bpf.o`` (an editable install).

    A missing file gets a message saying how to build it.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_file():
            raise BpfError(f"BPF object {path} not found: check {ENV_VAR}", errno.ENOENT)
        return path
    path = packaged_object() or checkout_object()
    if not path.is_file():
        raise BpfError(
            f"BPF object {path} not found: run `make -C bpf` in the repository (a wheel "
            f"carries it as fwd/{PACKAGED})",
            errno.ENOENT,
        )
    return path
