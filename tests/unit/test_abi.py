"""bpf/fwd.h and fwd/core/abi.py must agree: every constant, struct, field, size and offset."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import Any

import pytest

from fwd.core import abi

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "fwd.h"
C_SIZES = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8}
CTYPES = {
    "__u8": ctypes.c_uint8,
    "__u16": ctypes.c_uint16,
    "__u32": ctypes.c_uint32,
    "__u64": ctypes.c_uint64,
}


def _source() -> str:
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)  # block comments
    return re.sub(r"//[^\n]*", "", text)


def _defines() -> dict[str, int]:
    out = {}
    for name, expr in re.findall(
        r"^#define\s+(FWD_\w+)\s+(.+?)\s*$", _source(), flags=re.MULTILINE
    ):
        if name == "FWD_H":
            continue
        # Only integer arithmetic with shifts/ors: safe to evaluate once checked.
        assert re.fullmatch(r"[0-9xXa-fA-F()<>|+* ]+", expr), f"{name}: unexpected {expr!r}"
        out[name] = int(eval(expr, {"__builtins__": {}}))
    return out


def _structs() -> dict[str, list[tuple[str, str, int]]]:
    """struct name -> [(field, C type, array length or 0)] in declaration order."""
    out = {}
    for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\};", _source(), flags=re.DOTALL):
        fields = []
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            m = re.fullmatch(
                r"(__u8|__u16|__u32|__u64|struct\s+\w+)\s+(\w+)\s*(?:\[\s*(\w+)\s*\])?", decl
            )
            assert m, f"struct {name}: cannot parse {decl!r}"
            length = m.group(3)
            n = 0 if length is None else (int(length) if length.isdigit() else _defines()[length])
            fields.append((m.group(2), m.group(1), n))
        out[name] = fields
    return out


def test_header_parses_into_the_expected_shape() -> None:
    # A regex that silently missed lines would make the parametrized checks vacuous.
    defines = _defines()
    assert {"FWD_MAX_TUPLES", "FWD_ACT_DROP", "FWD_L4_LATER_FRAG", "FWD_SLOT_FIRST_RULE"} <= set(
        defines
    )
    assert len(defines) == len(re.findall(r"^#define\s+FWD_", _source(), flags=re.MULTILINE)) - 1
    assert set(_structs()) == set(abi.STRUCTS)


@pytest.mark.parametrize("name", sorted(_defines()))
def test_constant_matches(name: str) -> None:
    attr = name.removeprefix("FWD_")
    assert hasattr(abi, attr), f"abi.py does not mirror {name}"
    assert getattr(abi, attr) == _defines()[name]


@pytest.mark.parametrize("struct_name", sorted(abi.STRUCTS))
def test_struct_layout_matches(struct_name: str) -> None:
    fields = _structs()[struct_name]
    cls = abi.STRUCTS[struct_name]
    assert [f[0] for f in cls._fields_] == [f[0] for f in fields], "field order"
    offset, align = 0, 1
    py_types = {f[0]: f[1] for f in cls._fields_}
    ctype: Any
    for name, ctype_name, length in fields:
        py_type = py_types[name]
        if ctype_name.startswith("struct"):  # a nested struct from this header
            nested = abi.STRUCTS[ctype_name.split()[1]]
            size, field_align, ctype = ctypes.sizeof(nested), ctypes.alignment(nested), nested
        else:
            size = field_align = C_SIZES[ctype_name]
            ctype = CTYPES[ctype_name]
        # natural alignment, as clang lays it out
        offset = (offset + field_align - 1) // field_align * field_align
        descriptor = getattr(cls, name)
        assert descriptor.offset == offset, f"{struct_name}.{name} offset"
        total = size * (length or 1)
        assert descriptor.size == total, f"{struct_name}.{name} size"
        element = getattr(py_type, "_type_", py_type) if length else py_type
        assert element is ctype, f"{struct_name}.{name} type"
        if length:
            assert getattr(py_type, "_length_", None) == length, f"{struct_name}.{name} length"
        offset += total
        align = max(align, field_align)
    expected = (offset + align - 1) // align * align
    assert ctypes.sizeof(cls) == expected, f"sizeof(struct {struct_name})"
    assert ctypes.alignment(cls) == align
