"""Pinned maps and program: what lets a restarted agent keep the kernel's state.

Layout under the agent's bpffs directory (default /sys/fs/bpf/fwd)::

    links/<ifindex>   XDP links (fwd.actors.links)
    maps/<name>       every map of the object except libbpf's internal ones
    prog              the XDP program the links run (for bpftool and tools)

Before the object is loaded, every pinned map whose shape (type, key size,
value size, max entries, flags) equals the object's is reused
(``bpf_map__reuse_fd``): the new program sees the previous agent's policy and
counters, so nothing resets and nothing is empty while the agent restarts.
Internal maps (``.rodata*``) are never reused: they carry this start's settings.

The policy maps (:data:`POLICY_MAPS`) describe one policy together, so they
are reused all or none. A map whose pinned shape differs (an upgrade changed
its layout) is created fresh and its pin replaced after load; why is recorded
in :attr:`MapReuse.notes` for the log and the API. The shape check cannot see a
layout change that keeps every size (fields reordered); that needs a change of
size or of a map name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fwd.kernel.handle import Handle
from fwd.kernel.maps import Map
from fwd.kernel.objects import BpfObject, Program
from fwd.errors import BpfError

MAPS_DIR = "maps"
PROG_PIN = "prog"
POLICY_MAPS = ("fwd_live", "fwd_gen", "fwd_tuples", "fwd_rules", "fwd_sets")

Shape = tuple[int, int, int, int, int]
"""(type, key_size, value_size, max_entries, map_flags)."""
_FIELDS = ("type", "key_size", "value_size", "max_entries", "map_flags")


@dataclass(frozen=True)
class MapReuse:
    """Which maps were taken over from pins, which were created, and why not reused."""

    reused: tuple[str, ...] = ()
    created: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def policy_reused(self) -> bool:
        """Whether the kernel's policy maps (and so the enforced policy) were kept."""
        return all(name in self.reused for name in POLICY_MAPS)


def shape(m: Map) -> Shape:
    """What must be equal for a pinned map to stand in for the object's."""
    return (m.type, m.key_size, m.value_size, m.max_entries, m.map_flags)


def mismatch(pinned: Shape, wanted: Shape) -> str | None:
    """The differing fields as ``field pinned != wanted``, or None if the shapes agree."""
    diffs = [f"{f} {p} != {w}" for f, p, w in zip(_FIELDS, pinned, wanted, strict=True) if p != w]
    return ", ".join(diffs) or None


def plan_reuse(
    pinned: Mapping[str, Shape | str], wanted: Mapping[str, Shape]
) -> tuple[set[str], list[str]]:
    """Which maps to reuse (pure): ``pinned`` maps a name to its shape or an open error.

    Returns the names to reuse and a note for every pinned map not reused.
    """
    reuse: set[str] = set()
    notes: list[str] = []
    for name, want in wanted.items():
        got = pinned.get(name)
        if got is None:
            continue
        if isinstance(got, str):
            notes.append(f"{name}: {got}")
            continue
        why = mismatch(got, want)
        if why is None:
            reuse.add(name)
        else:
            notes.append(f"{name}: layout changed ({why})")
    policy = [n for n in POLICY_MAPS if n in wanted]
    kept = [n for n in policy if n in reuse]
    if kept and len(kept) != len(policy):
        missing = sorted(set(policy) - set(kept))
        notes.append(f"policy maps are reused together: {', '.join(missing)} cannot be")
        reuse -= set(policy)
    return reuse, notes


def reuse_pinned(obj: BpfObject, root: str | os.PathLike[str]) -> MapReuse:
    """Before ``obj.load()``: make ``obj`` use the compatible maps pinned under ``root``."""
    maps_dir = Path(root) / MAPS_DIR
    maps = {n: m for n, m in obj.maps().items() if not n.startswith(".")}
    wanted = {n: shape(m) for n, m in maps.items()}
    opened: dict[str, Map] = {}
    pinned: dict[str, Shape | str] = {}
    try:
        for name in wanted:
            path = maps_dir / name
            if not path.exists():
                continue
            try:
                opened[name] = Map.from_pinned(path)
                pinned[name] = shape(opened[name])
            except BpfError as exc:
                pinned[name] = f"cannot open the pin ({exc})"
        reuse, notes = plan_reuse(pinned, wanted)
        for name in sorted(reuse):
            obj.reuse_map_fd(name, opened[name].fd)
    finally:
        for m in opened.values():
            m.close()  # libbpf holds its own duplicate of each reused fd
    created = tuple(sorted(set(wanted) - reuse))
    return MapReuse(tuple(sorted(reuse)), created, tuple(notes))


def pin_object(
    obj: BpfObject, prog: Program, root: str | os.PathLike[str], reuse: MapReuse
) -> None:
    """After ``obj.load()``: pin the maps created fresh and the program under ``root``.

    Each pin is written beside its final name and renamed over it, so a crash
    leaves either the old pin or the new one, never none. Pins of maps the
    object no longer has (an upgrade dropped them) are removed.
    """
    maps_dir = Path(root) / MAPS_DIR
    maps_dir.mkdir(parents=True, exist_ok=True)
    for name in reuse.created:
        _replace_pin(obj.map(name), maps_dir / name)
    known = set(reuse.reused) | set(reuse.created)
    for stale in maps_dir.iterdir():
        if stale.name not in known:
            stale.unlink(missing_ok=True)
    _replace_pin(prog, Path(root) / PROG_PIN)


def _replace_pin(handle: Handle, path: Path) -> None:
    tmp = path.with_name(path.name + "_new")  # bpffs refuses names with a dot
    tmp.unlink(missing_ok=True)
    handle.pin(tmp)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BpfError(f"pin {handle.label} at {path}: {exc.strerror}", exc.errno or 0) from exc
