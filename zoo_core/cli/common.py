"""Helpers shared by the command modules: the registry for a command, tables and JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from ..registry import Registry, default_registry


def registry_for(args: Any) -> Registry:
    """The default registry, or one with the ``--registry`` files layered on top."""
    extra = getattr(args, "registry", None) or []
    return Registry.load(extra) if extra else default_registry()


def parse_classes(text: str | None, option: str = "--classes") -> list[str] | None:
    """``a,b,c`` as class names; empty or repeated names are refused."""
    from ..errors import ZooError

    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if any(not name for name in names):
        raise ZooError(f"{option} {text!r}: a class name is empty; write names separated by single commas")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ZooError(f"{option} {text!r}: names {', '.join(map(repr, repeated))} more than once; give each class once")
    return names


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    lines = ["  ".join(header.ljust(widths[i]) for i, header in enumerate(headers)).rstrip()]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def human_count(count: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)
