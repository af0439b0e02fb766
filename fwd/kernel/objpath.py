"""Where the compiled data-plane object lives."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from fwd.errors import BpfError

ENV_VAR = "FWD_BPF_OBJECT"


def default_object_path() -> Path:
    """The fwd XDP object: ``$FWD_BPF_OBJECT`` if set, else ``<repo>/bpf/build/fwd.bpf.o``.

    The object is built at set-up time, not shipped (bpf/README.md), so a
    missing file gets a message saying how to build it.
    """
    env = os.environ.get(ENV_VAR)
    path = (
        Path(env)
        if env
        else Path(__file__).resolve().parents[2] / "bpf/build/fwd.bpf.o"
    )
    if not path.is_file():
        hint = f"check {ENV_VAR}" if env else "run `make -C bpf` in the repository"
        raise BpfError(f"BPF object {path} not found: {hint}", errno.ENOENT)
    return path
