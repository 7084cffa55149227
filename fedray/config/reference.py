"""The config reference, generated from the pydantic schema (``docs/config.md``).

Every key's type, default, allowed values and meaning come from :mod:`fedray.config`
itself (its field constraints and attribute docstrings), so the published reference
cannot drift from what the validator accepts. ``python -m fedray.config.reference`` rewrites
``docs/config.md``; a test checks that the committed file is current.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from fedray.config import Config
from fedray.config.strategy import RECIPES, FedAvgConfig

_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def _type(annotation: Any) -> str:
    """A short, readable form of a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None))
    if origin is not None:
        inner = ", ".join(_type(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    """The numeric constraints of a field, e.g. ``≥ 0, < 1``."""
    found = []
    parts = list(field.metadata)
    for arg in typing.get_args(field.annotation):  # constraints inside a union member
        parts += [m for a in typing.get_args(arg) for m in getattr(a, "metadata", [])]
        parts += list(getattr(arg, "__metadata__", []))
    for meta in parts:
        for attr, sign in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return ", ".join(dict.fromkeys(found))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return f"`{field.default_factory()}`"  # type: ignore[call-arg]
    if field.default is PydanticUndefined or field.default is None:
        return "–"
    return f"`{field.default}`"


def _row(key: str, field: FieldInfo, note: str = "") -> str:
    meaning = " ".join((note + (field.description or "")).split()).replace("|", "\\|")
    allowed = " ".join(x for x in (_type(field.annotation), _bounds(field)) if x)
    return f"| `{key}` | {_default(field)} | {allowed} | {meaning} |"


def _strategy_rows() -> list[str]:
    """``strategy.name``, the options of every recipe, then each recipe's own."""
    names = " \\| ".join(f"`{n}`" for n in RECIPES)
    meaning = " ".join((FedAvgConfig.model_fields["name"].description or "").split())
    rows = [f"| `strategy.name` | `fedavg` | {names} | {meaning} |"]
    common = [k for k in FedAvgConfig.model_fields if k not in FedAvgConfig.options()]
    rows += [_row(f"strategy.{k}", FedAvgConfig.model_fields[k]) for k in common if k != "name"]
    readers: dict[str, list[str]] = {}
    for name, model in RECIPES.items():
        for option in model.options():
            readers.setdefault(option, []).append(name)
    for option, recipes in readers.items():
        field = RECIPES[recipes[0]].model_fields[option]
        rows.append(_row(f"strategy.{option}", field, f"({', '.join(recipes)} only) "))
    return rows


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if key == "strategy":
            rows += _strategy_rows()
            continue
        annotation = field.annotation
        section = next(
            (
                a
                for a in (annotation, *typing.get_args(annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if section is not None:
            rows += _rows(section, f"{key}.")
            continue
        rows.append(_row(key, field))
    return rows


def config_reference() -> str:
    """Markdown: one table row per config key, from the schema."""
    lines = [
        "# Config reference",
        "",
        "Generated from `fedray/config/` by `python -m fedray.config.reference`; do not edit.",
        "Every key has a type, a default and a range; an unknown key, a wrong type or an",
        "out-of-range value is refused in one line naming the key, the value and what is",
        "allowed. Which combinations of features are refused is in",
        "[Feature interactions](interactions.md).",
        "",
        "| key | default | allowed | meaning |",
        "|---|---|---|---|",
        *_rows(Config, ""),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the reference to ``docs/config.md`` (or the path given)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path("docs") / "config.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_reference())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
