"""One error type for bad input, always one line: where, which field, the value, what is allowed.

The checks every config type shares live here too (scikit-learn's ``_parameter_constraints`` idea):
an unknown key, a number out of range or a wrong type reads the same whichever file it came from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any


class DesignSpaceError(ValueError):
    """Bad user input (a design, a space, a config file, a data folder...).

    The message is a single line naming the source (file) when known, the field, the value and the fix.
    """


def invalid(field: str, value, allowed, source: str | None = None) -> DesignSpaceError:
    """Build the standard one-line error: ``[source: ]field=value is invalid; allowed: ...``."""
    if isinstance(allowed, (list, tuple, set, frozenset)):
        allowed = ", ".join(map(str, allowed))
    where = f"{source}: " if source else ""
    return DesignSpaceError(f"{where}{field}={value!r} is invalid; allowed: {allowed}")


def with_source(error: DesignSpaceError, source: str | None) -> DesignSpaceError:
    """The same error with ``source: `` in front (once)."""
    text = str(error)
    if not source or text.startswith(f"{source}:"):
        return error
    return DesignSpaceError(f"{source}: {text}")


def check_keys(d: Mapping, allowed: Iterable[str], prefix: str = "", source: str | None = None) -> None:
    """Refuse a key of ``d`` that is not in ``allowed``: the one check every file-backed config runs."""
    if not isinstance(d, Mapping):
        raise invalid(prefix.rstrip(".") or "value", type(d).__name__, "a mapping", source)
    allowed = list(allowed)
    for k in d:
        if k not in allowed:
            raise invalid(f"{prefix}{k}", d[k], "fields " + ", ".join(sorted(allowed)), source)


def dataclass_from_dict(cls, d: Mapping | None, prefix: str = "", source: str | None = None,
                        exclude: Iterable[str] = ()) -> Any:
    """``cls(**d)`` after refusing unknown keys; errors raised by the constructor get ``source``."""
    d = dict(d or {})
    names = [f.name for f in dataclasses.fields(cls) if f.name not in set(exclude)]
    check_keys(d, names, prefix, source)
    try:
        return cls(**d)
    except DesignSpaceError as e:
        raise with_source(e, source) from None


def check_int(value, field: str, minimum: int | None = None, maximum: int | None = None,
              none: bool = False, source: str | None = None) -> int | None:
    """An integer in [minimum, maximum] (``None`` allowed when ``none``); bools are not integers."""
    if value is None and none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        raise invalid(field, value, _range_text("an integer", minimum, maximum, none), source)
    return int(value)


def check_float(value, field: str, low: float | None = None, high: float | None = None,
                open_low: bool = False, open_high: bool = False, none: bool = False,
                source: str | None = None) -> float | None:
    """A finite number in the given interval (open ends excluded)."""
    if value is None and none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value < high if open_high else value <= high
    if not ok:
        lo = "" if low is None else f"{low} {'<' if open_low else '<='} "
        hi = "" if high is None else f" {'<' if open_high else '<='} {high}"
        text = f"a number {lo}x{hi}".replace("  ", " ") + (" or null" if none else "")
        raise invalid(field, value, text, source)
    return float(value)


def check_choice(value, field: str, allowed: Iterable, source: str | None = None):
    allowed = tuple(allowed)
    if value not in allowed:
        raise invalid(field, value, allowed, source)
    return value


def _range_text(what: str, minimum, maximum, none: bool) -> str:
    if minimum is not None and maximum is not None:
        text = f"{what} from {minimum} to {maximum}"
    elif minimum is not None:
        text = f"{what} >= {minimum}"
    elif maximum is not None:
        text = f"{what} <= {maximum}"
    else:
        text = what
    return text + (" or null" if none else "")
