"""Policy files: YAML (and therefore JSON) text to a validated Policy and back.

Parsing uses PyYAML's safe loader only (no arbitrary object construction);
validation is ``policy_from_dict``'s, so every error names its field. A YAML
syntax error becomes a PolicyError with the empty field and a message naming
the source and the line and column.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, BinaryIO

import yaml

from fwd.errors import PolicyError
from fwd.policy.model import Policy, policy_from_dict, policy_to_dict

MAX_POLICY_BYTES = 64 * 1024 * 1024
"""Documents larger than this are refused before parsing (a 100,000-rule file is ~10 MB)."""

# libyaml's loader is the same safe loader, an order of magnitude faster on big policies.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """The safe loader, refusing duplicate keys.

    YAML keeps the last of two equal keys silently: a second ``rules:`` would
    drop every rule above it without a word. Overrides through ``<<`` merge
    keys stay allowed: that is what merging is for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


def _too_big(size: str, source: str) -> PolicyError:
    return PolicyError(
        "", f"{source}: {size} bytes exceed the policy size limit of {MAX_POLICY_BYTES} bytes"
    )


def _syntax_error(exc: yaml.YAMLError, source: str) -> PolicyError:
    where = source
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        # Marks count from zero; editors count from one.
        where = f"{source}: line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    detail = f"{context}: {problem}" if context else str(problem)
    return PolicyError("", f"{where}: invalid YAML: {detail}")


def yaml_error(exc: yaml.YAMLError, source: str) -> PolicyError:
    """A YAML syntax error as one line: where (line, column) and what, no trace."""
    return _syntax_error(exc, source)


FORMATS = ("json", "yaml")
_EXTENSIONS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def format_of(name: str) -> str | None:
    """The format a file's name says (.json, .yaml, .yml), or None."""
    return _EXTENSIONS.get(os.path.splitext(name)[1].lower())


def _strict_json(text: str, source: str) -> Any:
    """A JSON document, strictly: a syntax error is reported, never retried as YAML
    (a broken ``.json`` file used to be read as YAML and applied as something else)."""
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except _DuplicateKey as exc:
        raise PolicyError("", f"{source}: invalid JSON: duplicate key {exc.args[0]!r}") from None
    except json.JSONDecodeError as exc:
        raise PolicyError(
            "", f"{source}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise PolicyError("", f"{source}: invalid JSON: nested too deeply") from None


def load_policy_text(
    text: str, source: str = "<policy>", fmt: str | None = None, *, allow_empty: bool = True
) -> Policy:
    """Parse and validate a policy document: ``fmt`` "json" (strict), "yaml", or None
    (JSON when it parses as JSON, else YAML).

    Raises PolicyError for syntax errors (field "", message with line/column),
    oversized documents and every validation error of ``policy_from_dict``; with
    ``allow_empty`` False also for a document that says nothing (:func:`is_empty`),
    which would be enforced as allow-all.
    """
    # Characters are at most 4 bytes: only measure the encoding when it could matter.
    if len(text) > MAX_POLICY_BYTES // 4:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_POLICY_BYTES:
            raise _too_big(str(size), source)
    raw = _strict_json(text, source) if fmt == "json" else _NOT_JSON
    if raw is _NOT_JSON and fmt != "yaml":
        raw = _load_json(text, source)
    if raw is _NOT_JSON:
        try:
            raw = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise _syntax_error(exc, source) from None
    raw = _unwrap(raw)
    if not allow_empty and is_empty(raw):
        raise PolicyError(
            "",
            f"{source}: the policy is empty (no rules, no default_action): applied, it would "
            "allow everything; pass --allow-empty if that is what you mean",
        )
    return policy_from_dict(raw)


# ``fwd policy get -o json`` prints {"revision", "policy", "adoption"}: read back, the
# policy is what is meant (as kubectl apply takes what kubectl get printed).
_ENVELOPE = frozenset({"revision", "policy", "adoption"})


def _unwrap(raw: Any) -> Any:
    if isinstance(raw, dict) and "policy" in raw and set(raw) <= _ENVELOPE:
        return raw["policy"]
    return raw


def is_empty(raw: Any) -> bool:
    """Whether a parsed document sets nothing: no document (an empty file, /dev/null, only
    comments), ``{}``, or only keys without values (``rules:``)."""
    if raw is None:
        return True
    return isinstance(raw, dict) and all(v is None or v == [] or v == {} for v in raw.values())


_NOT_JSON = object()


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


class _DuplicateKey(Exception):
    """A JSON object repeats a key (internal: becomes a PolicyError)."""


def _load_json(text: str, source: str) -> Any:
    """Parse ``text`` as JSON when it is JSON; ``_NOT_JSON`` otherwise.

    JSON is YAML, but libyaml through PyYAML's constructor parses ~10,000 rules
    per second while the json module parses ~50 times that: tools and the CLI
    exchange big policies as JSON.
    """
    if not text.lstrip().startswith("{"):
        return _NOT_JSON
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except _DuplicateKey as exc:
        raise PolicyError("", f"{source}: invalid JSON: duplicate key {exc.args[0]!r}") from None
    except (ValueError, RecursionError):
        return _NOT_JSON  # a YAML flow mapping ({rules: []}) or broken: YAML says which


def load_policy_file(
    path: str | os.PathLike[str], fmt: str | None = None, stdin: BinaryIO | None = None,
    *, allow_empty: bool = True,
) -> Policy:
    """Read, parse and validate a policy file; unreadable files raise PolicyError
    (and so does an empty one unless ``allow_empty``: see :func:`load_policy_text`).

    The format is ``fmt``, else the name's (.json strict JSON, .yaml/.yml YAML);
    another name needs ``fmt``. ``-`` reads ``stdin`` (default: the process's), JSON
    unless ``fmt`` says "yaml", so ``fwd policy get -o json | fwd policy apply -`` works.
    """
    name = os.fspath(path)
    if fmt is None:
        fmt = "json" if name == "-" else format_of(name)
        if fmt is None:
            raise PolicyError(
                "", f"{name}: the name does not say the format: name it .json, .yaml or "
                ".yml, or give --format json|yaml"
            )
    try:
        if name == "-":
            data = (stdin or sys.stdin.buffer).read(MAX_POLICY_BYTES + 1)
            name = "<stdin>"
        else:
            with open(name, "rb") as f:
                # Read one byte past the limit so an oversized file is refused without
                # loading all of it.
                data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError("", f"{name}: cannot read policy file: {exc.strerror or exc}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise _too_big(f"more than {MAX_POLICY_BYTES}", name)
    try:
        text = data.decode("utf-8-sig")  # tolerate a BOM from Windows editors
    except UnicodeDecodeError as exc:
        raise PolicyError("", f"{name}: not UTF-8 text (byte {exc.start})") from None
    return load_policy_text(text, source=name, fmt=fmt, allow_empty=allow_empty)


_json_text = json.JSONEncoder(ensure_ascii=False).encode
# Text YAML reads back as the same text when written bare: a word starting with a
# letter (not one of YAML 1.1's booleans and nulls), a CIDR or address with a "/",
# a port range. Anything else is written as a JSON string (JSON is YAML).
_BARE = re.compile(r"[A-Za-z][A-Za-z0-9_.*-]*|[0-9A-Fa-f][0-9A-Fa-f.:]*/[0-9]+|[0-9]+-[0-9]+")
_YAML11_WORDS = frozenset(
    "y n yes no on off true false null".split()
)


def _scalar(value: Any) -> str:
    if isinstance(value, str) and _BARE.fullmatch(value) and value.lower() not in _YAML11_WORDS:
        return value
    if isinstance(value, list):
        return "[" + ", ".join(map(_scalar, value)) + "]"
    return _json_text(value)


def _flow(mapping: dict[str, Any]) -> str:
    """A flow mapping on one line, as people write rules:
    ``{id: ssh, action: allow, protocol: tcp, dst_ports: [22, 8000-8080]}``."""
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in mapping.items()) + "}"


def dump_policy_yaml(policy: Policy) -> str:
    """Render a policy as YAML that ``load_policy_text`` reads back to an equal Policy.

    One rule a line (a flow mapping, as the README's examples write them) and one
    set a line: readable, greppable, diffable, and written without PyYAML's
    representer, which took ~10 s for 100,000 rules (this takes well under one).
    """
    doc = policy_to_dict(policy)
    out = [f"default_action: {doc['default_action']}\n",
           f"dry_run: {'true' if doc['dry_run'] else 'false'}\n"]
    if doc.get("log_default"):
        out.append("log_default: true\n")
    if doc.get("sets"):
        out.append("sets:\n")
        out += [f"  {_scalar(name)}: {_flow(body)}\n" for name, body in doc["sets"].items()]
    rules = doc["rules"]
    out.append("rules:\n" if rules else "rules: []\n")
    out += [f"  - {_flow(r)}\n" for r in rules]
    return "".join(out)
