"""One error type for bad input, always one line: where, which field, the value, what is allowed."""

from __future__ import annotations


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
