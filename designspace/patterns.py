"""The shapes of the design space: how G groups split the layers, and how the budget splits over them."""

from __future__ import annotations

from .errors import DesignSpaceError, invalid

#: Weight vectors of the grouping patterns for G = 4; other G interpolate the same shapes.
GROUPING_PATTERNS = ("increasing", "uniform", "decreasing", "spindle", "bottleneck")
ALLOCATION_PATTERNS = ("increasing", "uniform", "decreasing")


def pattern_weights(pattern: str, n_groups: int) -> list[float]:
    """Relative group sizes. For G = 4: (1,2,3,4), (1,1,1,1), (4,3,2,1), (1,2,2,1), (2,1,1,2)."""
    g = n_groups
    if pattern == "increasing":
        return [i + 1.0 for i in range(g)]
    if pattern == "decreasing":
        return [float(g - i) for i in range(g)]
    if pattern == "uniform":
        return [1.0] * g
    if pattern in ("spindle", "bottleneck"):
        # Middle groups twice the edge groups (spindle), or the reverse (bottleneck).
        edge, middle = (1.0, 2.0) if pattern == "spindle" else (2.0, 1.0)
        if g <= 2:
            return [1.0] * g
        return [edge] + [middle] * (g - 2) + [edge]
    raise invalid("grouping", pattern, GROUPING_PATTERNS)


def apportion(total: int, weights: list[float], minimum: int = 0) -> list[int]:
    """Largest-remainder apportionment of ``total`` items by ``weights``; each share >= ``minimum``.

    The whole total is apportioned first (30 layers, increasing: 3/6/9/12, the pattern's own shape);
    a share below ``minimum`` is then topped up from the largest shares.
    """
    n = len(weights)
    if total < minimum * n:
        raise DesignSpaceError(f"cannot split {total} items into {n} parts of at least {minimum}")
    s = sum(weights)
    quotas = [total * w / s for w in weights]
    shares = [int(q) for q in quotas]
    # Ties broken by position so that the result is deterministic.
    order = sorted(range(n), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    for i in range(n):
        while shares[i] < minimum:
            donor = max(range(n), key=lambda j: (shares[j] - minimum, quotas[j]))
            shares[donor] -= 1
            shares[i] += 1
    return shares


def group_sizes(n_layers: int, pattern: str, n_groups: int = 4) -> list[int]:
    """Number of consecutive layers per group; every group gets at least one layer.

    >>> group_sizes(24, "spindle")
    [4, 8, 8, 4]
    """
    if n_layers < n_groups:
        raise DesignSpaceError(
            f"n_layers={n_layers} is fewer than n_groups={n_groups}; use a design space with n_groups <= {n_layers}"
        )
    return apportion(n_layers, pattern_weights(pattern, n_groups), minimum=1)


def layer_groups(n_layers: int, pattern: str, n_groups: int = 4) -> list[int]:
    """The group (1-based) of every layer, layers numbered encoder first, then decoder."""
    out: list[int] = []
    for g, size in enumerate(group_sizes(n_layers, pattern, n_groups), start=1):
        out += [g] * size
    return out


def allocation_weights(pattern: str, n: int) -> list[float]:
    """The share of each of ``n`` tuned layers (in layer order) under an allocation pattern."""
    if pattern == "increasing":
        return [i + 1.0 for i in range(n)]
    if pattern == "decreasing":
        return [float(n - i) for i in range(n)]
    if pattern == "uniform":
        return [1.0] * n
    raise invalid("allocation", pattern, ALLOCATION_PATTERNS)


def same_partition(n_layers: int, patterns, n_groups: int) -> list[list[str]]:
    """Grouping patterns that split ``n_layers`` identically, as classes in the given order
    (6 layers, 4 groups: uniform and decreasing are both 2/2/1/1)."""
    classes: dict[tuple, list[str]] = {}
    for p in patterns:
        classes.setdefault(tuple(group_sizes(n_layers, p, n_groups)), []).append(p)
    return list(classes.values())
