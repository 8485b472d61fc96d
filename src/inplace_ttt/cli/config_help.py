"""A config schema as text, for ``--help``: a schema is a dataclass whose dataclass-typed fields are
its sections (nested to any depth). Each key gets one line: its dotted name, its default, its type
and allowed values (``field.metadata["choices"]``, a `Literal` or an `Enum`), and the first
sentence of ``field.metadata["help"]``. Works on any dataclass, transformers' `TrainingArguments`
included."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from enum import Enum
from typing import Any

HELP_WIDTH = 100  # characters of a key's help text shown; the rest is cut
SHOWN_CHOICES = 12  # allowed values listed (transformers' optimizers are 41); the rest are counted
KEY_WIDTH, DEFAULT_WIDTH = 40, 24  # the columns' widths at most (a longer value pushes its line on)


def describe_schema(schema: type) -> list[str]:
    """The lines listing every key of `schema`, sections under a ``name:`` line. Defaults are the
    schema's own: a section's ``default_factory`` is called, so a family's section defaults show."""
    rows = _rows(schema, None, "")
    width = min(max((len(row[0]) for row in rows if len(row) > 1), default=0), KEY_WIDTH)
    default_width = min(max((len(row[1]) for row in rows if len(row) > 1), default=0), DEFAULT_WIDTH)
    return [row[0] if len(row) == 1 else f"  {row[0]:<{width}}  {row[1]:<{default_width}}  {row[2]}".rstrip() for row in rows]


def _rows(cls: type, instance: Any, prefix: str) -> list[tuple[str, ...]]:
    """(key, default, type and help) per key, and (header,) before each section."""
    hints = _hints(cls)
    keys, sections = [], []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        tp = hints.get(f.name, f.type)
        default = getattr(instance, f.name) if instance is not None else _default(f)
        key = prefix + f.name
        section = _section_type(tp)
        if section is None:
            allowed = f.metadata.get("choices") or _declared_choices(tp)
            text = _type_name(tp) + (f"; one of: {_listed(allowed)}" if allowed else "") + _help(f.metadata.get("help"))
            keys.append((key, _shown(default), text))
        else:
            nullable = type(None) in typing.get_args(tp)
            header = f"{key}:" + (
                " (null: off)" if nullable and default is not None else " (default null: off; give the section to turn it on)" if nullable else ""
            )
            sections += [("",), (header,), *_rows(section, default if dataclasses.is_dataclass(default) else None, key + ".")]
    return keys + sections


def _hints(cls: type) -> dict[str, Any]:
    """The fields' resolved types (annotations may be strings); the raw ones where they do not resolve."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def _section_type(tp: Any) -> type | None:
    """The dataclass a field's type is (or is optionally), None for a plain key."""
    candidates = [a for a in typing.get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
    return candidates[0] if len(candidates) == 1 and dataclasses.is_dataclass(candidates[0]) else None


def _declared_choices(tp: Any) -> list[Any] | None:
    """The values a `Literal` or an `Enum` in a field's type allows."""
    if typing.get_origin(tp) is typing.Literal:
        return list(typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return [member.value for member in tp]
    if _is_union(tp):
        return next((found for found in map(_declared_choices, typing.get_args(tp)) if found), None)
    return None


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):
        return tp
    if tp is type(None):
        return "null"
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0]).__name__
    if typing.get_origin(tp) is not None:
        origin = typing.get_origin(tp)
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _shown(value: Any) -> str:
    """A value as a YAML file would spell it."""
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return repr(value) if value == "" else str(value)


def _listed(allowed: Sequence[Any]) -> str:
    allowed = list(allowed)
    shown = ", ".join(_shown(c) for c in allowed[:SHOWN_CHOICES])
    return shown if len(allowed) <= SHOWN_CHOICES else f"{shown}, ... ({len(allowed)} in all)"


def _help(text: str | None) -> str:
    """The first sentence of a help text, on one line, cut to `HELP_WIDTH` characters."""
    if not text:
        return ""
    first = " ".join(text.split()).split(". ")[0].rstrip(".")
    return "  # " + (first if len(first) <= HELP_WIDTH else first[: HELP_WIDTH - 3] + "...")
