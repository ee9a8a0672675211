"""Reading and writing the YAML/JSON files of designs, spaces and experiments (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .errors import DesignSpaceError
from .space import Design


# --- files ------------------------------------------------------------------------------
def load_yaml(path: str | Path) -> dict:
    """Read a YAML or JSON file into a dict, with a one-line error naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise DesignSpaceError(f"{p}: file not found; pass the path of an existing YAML or JSON file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise DesignSpaceError(f"{p}:{where}: {problem}; fix the YAML syntax there") from None
    if not isinstance(data, dict):
        raise DesignSpaceError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def save_yaml(obj, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = obj.to_dict() if hasattr(obj, "to_dict") else obj
    if p.suffix == ".json":
        p.write_text(json.dumps(data, indent=2) + "\n")
    else:
        p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def load_design(path_or_name: str | Path) -> Design:
    """A design from a YAML/JSON file (a bare design, or a file with a ``design:`` key) or a preset name."""
    return load_design_file(path_or_name)[0]


def load_design_file(path_or_name: str | Path) -> tuple[Design, float | None]:
    """(design, budget) from a preset name or a file; ``budget`` is the file's top-level ``budget:``
    next to ``design:`` (the budget it was found at), else None."""
    from .presets import PRESETS

    if isinstance(path_or_name, str) and path_or_name in PRESETS:
        return PRESETS[path_or_name], None
    p = Path(path_or_name)
    if not p.exists():
        raise DesignSpaceError(f"{p}: no such design file or preset; presets: {', '.join(PRESETS)}")
    data = load_yaml(p)
    budget = None
    if "design" in data and isinstance(data["design"], dict):
        budget = data.get("budget")
        data = data["design"]
    elif data.get("kind") == "plan":  # a plan file: its design, compiled at its budget
        budget, data = data.get("budget"), data.get("design") or {}
    return Design.from_dict(data, source=str(p)), budget


