"""Budget-constrained gates: one logit per candidate, a shift that makes the expected cost the budget.

``p_i = sigmoid((alpha_i - b) / beta)``, with the shift ``b`` solved (no gradient) so that
``sum_i p_i n_i == budget``. While searching, a gate is a binary-concrete sample of probability
``p_i`` (temperature ``tau``); at evaluation it is ``p_i`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def solve_shift(alpha: torch.Tensor, n: torch.Tensor, budget: float, beta: float, iters: int = 200) -> float:
    """The ``b`` with ``sum n * sigmoid((alpha - b) / beta) == budget``: -inf when everything fits.

    Bisection in float64 on the CPU (a few hundred values: one copy, no device round trip per
    iteration): the expected cost falls monotonically in ``b``, and the bracket below puts it within
    1e-20 of the total at one end and of 0 at the other.
    """
    import numpy as np

    a = alpha.detach().double().cpu().numpy()
    n = n.detach().double().cpu().numpy()
    if budget >= float(n.sum()):
        return -math.inf
    if budget <= 0:
        return math.inf
    lo, hi = float(a.min()) - 50 * beta, float(a.max()) + 50 * beta
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):  # adjacent doubles: as exact as float64 gets
            break
        with np.errstate(over="ignore"):  # exp overflow is a probability of 0, as meant
            spent = float((n / (1.0 + np.exp(-(a - mid) / beta))).sum())
        if spent > budget:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class Gates(nn.Module):
    """The logits ``alpha`` of ``len(params)`` candidates whose costs are ``params``.

    ``current`` holds the gate values the hooks read (``None``: ungated); ``sample()`` and
    ``probs()`` compute them, the search loop sets them.
    """

    def __init__(self, params: Sequence[int], budget: int, beta: float = 1.0, tau: float = 0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(len(params)))
        self.register_buffer("n", torch.tensor(list(params), dtype=torch.float64))
        self.budget, self.beta, self.tau = budget, beta, tau
        self.current: torch.Tensor | None = None
        self._shift: tuple | None = None  # (alpha version, budget, shift): solved once per update

    def shift(self) -> float:
        key = (self.alpha._version, self.alpha.data_ptr(), float(self.budget))
        if self._shift is None or self._shift[:3] != key:
            self._shift = (*key, solve_shift(self.alpha, self.n, self.budget, self.beta))
        return self._shift[3]

    def logits(self, shift: float | None = None) -> torch.Tensor:
        b = self.shift() if shift is None else shift
        if math.isinf(b):  # everything fits (b = -inf) or nothing does (b = +inf)
            return torch.full_like(self.alpha, -b) + 0 * self.alpha
        return (self.alpha - b) / self.beta

    def probs(self, shift: float | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(shift))

    def expected_cost(self) -> float:
        return float((self.probs().detach().double() * self.n).sum())

    def noise(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logistic noise, one draw per candidate (kept fixed across the passes of one unrolled step)."""
        u = torch.rand(self.alpha.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
        return (torch.log(u) - torch.log1p(-u)).to(self.alpha.device)

    def sample(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Relaxed Bernoulli(p) gates: ``sigmoid((logit + logistic noise) / tau)``; P(gate > 1/2) = p."""
        noise = self.noise() if noise is None else noise
        return torch.sigmoid((self.logits() + noise) / self.tau)
