"""The ablated units of the ablation experiment: Eq. 12 with one part switched
(:class:`AblatedOutputNoise`) and noise that ignores saturation (:class:`DropoutNoise`).

Each row of :mod:`noisyact.experiments.ablation` that is not a library unit is built from these.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import functional as F
from ..saturating import Saturating

__all__ = ["DIRECTIONS", "AblatedOutputNoise", "DropoutNoise", "matched_sigma"]

DIRECTIONS = ("inward", "random", "outward")


def matched_sigma(delta: Tensor, p: Tensor, c: float) -> Tensor:
    """σ̄: the mean of Eq. 9's σ = c (g(p∆) − 0.5)² over the saturated elements (∆ ≠ 0), detached;
    0 when nothing saturates."""
    with torch.no_grad():
        sat = delta != 0
        if not bool(sat.any()):
            return delta.new_zeros(())
        sigma = F.noise_scale(delta, p, c)
        return sigma[sat].mean()


class AblatedOutputNoise(nn.Module):
    """Eq. 12 with one part switched: ``sigma="eq9"|"const"`` (σ(x) of Eq. 9 or σ̄ of
    :func:`matched_sigma` where saturated), ``direction="inward"|"random"|"outward"`` (d(x) of
    §4.2, a random sign, or −d(x)) and ``half_normal`` (ε = |ξ| or ξ).

    Training: αh + (1 − α)u + d σ ε. Eval: the expectation over ξ (Eq. 13 analogue):
    αh + (1 − α)u + d σ E[ε], with E[ε] = √(2/π) for half-normal and E[d] = 0 for a random sign.
    p has one value per feature along the last axis, initialised U(−1, 1) (§6).
    """

    def __init__(self, fn: Saturating, n: int, *, alpha: float, c: float, sigma: str = "eq9",
                 direction: str = "inward", half_normal: bool = False) -> None:
        super().__init__()
        if sigma not in ("eq9", "const"):
            raise ValueError(f"sigma must be 'eq9' or 'const', got {sigma!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.fn, self.alpha, self.c = fn, float(alpha), float(c)
        self.sigma, self.direction, self.half_normal = sigma, direction, half_normal
        self.p = nn.Parameter(torch.empty(n))
        self.calls = 0  # forward calls (tests check that a layer really runs this unit)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """p ~ U(−1, 1) (§6)."""
        with torch.no_grad():
            self.p.uniform_(-1.0, 1.0)

    def _sigma(self, delta: Tensor) -> Tensor:
        if self.sigma == "eq9":
            return F.noise_scale(delta, self.p, self.c)  # Eq. 9
        return matched_sigma(delta, self.p, self.c) * (delta != 0).to(delta.dtype)

    def _direction(self, x: Tensor, coin: Tensor | None) -> Tensor:
        d = F.noise_direction(x, self.alpha)  # d(x) = −sgn(x) sgn(1 − α), sgn(0) = 1
        if self.direction == "outward":
            return -d
        if self.direction == "random":
            if coin is None:
                coin = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
            return coin
        return d

    def noisy(self, x: Tensor, xi: Tensor, coin: Tensor | None = None) -> Tensor:
        """The training output for a given ξ (and, for ``direction="random"``, signs ``coin``)."""
        h, u = self.fn.h(x), self.fn.u(x)
        eps = xi.abs() if self.half_normal else xi
        delta = F.saturation(h, u)  # Eq. 8
        return (self.alpha * h + (1.0 - self.alpha) * u
                + self._direction(x, coin) * self._sigma(delta) * eps)

    def expectation(self, x: Tensor) -> Tensor:
        """E_ξ of :meth:`noisy` (eval)."""
        h, u = self.fn.h(x), self.fn.u(x)
        out = self.alpha * h + (1.0 - self.alpha) * u
        if self.half_normal and self.direction != "random":
            sigma = self._sigma(F.saturation(h, u))
            out = out + self._direction(x, None) * sigma * F.HALF_NORMAL_MEAN
        return out

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.training:
            return self.noisy(x, torch.randn_like(x))
        return self.expectation(x)

    def extra_repr(self) -> str:
        return (f"{self.fn.name}, n={self.p.numel()}, alpha={self.alpha:g}, c={self.c:g}, "
                f"sigma={self.sigma}, direction={self.direction}, half_normal={self.half_normal}")


class DropoutNoise(nn.Module):
    """A regulariser baseline: h(x)·(1 + s ξ) in training, h(x) in eval, with s = σ̄
    (:func:`matched_sigma` of Eq. 9 with a U(−1, 1) p that receives no gradient)."""

    def __init__(self, fn: Saturating, n: int, *, c: float) -> None:
        super().__init__()
        self.fn, self.c = fn, float(c)
        self.p = nn.Parameter(torch.empty(n), requires_grad=False)
        self.calls = 0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.p.uniform_(-1.0, 1.0)

    def scale(self, x: Tensor) -> Tensor:
        """s = σ̄ over the saturated elements of x."""
        return matched_sigma(F.saturation(self.fn.h(x), self.fn.u(x)), self.p, self.c)

    def noisy(self, x: Tensor, xi: Tensor) -> Tensor:
        return self.fn.h(x) * (1.0 + self.scale(x) * xi)

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.training:
            return self.noisy(x, torch.randn_like(x))
        return self.fn.h(x)

    def extra_repr(self) -> str:
        return f"{self.fn.name}, n={self.p.numel()}, c={self.c:g}"
