"""Saturating functions h and their linearisations u (paper §2, Eqs. 1-4).

A noisy activation is built from a pair (h, u): the saturating function h and its first-order
Taylor expansion u around 0. Their difference ∆ = h(x) − u(x) (Eq. 8) is zero where h is linear and
grows with the degree of saturation.

The paper's hard-sigmoid is ``clip(0.25 x + 0.5, 0, 1)`` (Eq. 3), which saturates at |x| >= 2.
It is **not** :func:`torch.nn.functional.hardsigmoid`, which is ``x / 6 + 1 / 2`` (saturating at
|x| >= 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "HARD_SIGMOID",
    "HARD_TANH",
    "SIGMOID",
    "TANH",
    "TORCH_HARDSIGMOID",
    "Saturating",
    "hard_sigmoid",
    "hard_tanh",
    "linear_sigmoid",
]


def hard_tanh(x: Tensor) -> Tensor:
    """Eq. 4: ``max(min(x, 1), -1)``."""
    return torch.clamp(x, -1.0, 1.0)


def linear_sigmoid(x: Tensor) -> Tensor:
    """Eq. 1: u^s(x) = 0.25 x + 0.5, the linearisation of the sigmoid at 0."""
    return 0.25 * x + 0.5


def hard_sigmoid(x: Tensor) -> Tensor:
    """Eq. 3: ``max(min(0.25 x + 0.5, 1), 0)``; saturates at |x| >= 2 (not ``F.hardsigmoid``)."""
    return torch.clamp(0.25 * x + 0.5, 0.0, 1.0)


def _identity(x: Tensor) -> Tensor:
    """Eq. 2: u^t(x) = x, the linearisation of tanh at 0."""
    return x


@dataclass(frozen=True)
class Saturating:
    """A saturating function h with its linearisation u.

    Args:
        name: short name used in ``repr`` and in the registry.
        h: the saturating function.
        u: its linearisation around 0 (``h(x) == u(x)`` wherever h is linear).
        threshold: |x_t|, where a hard function starts to saturate (1 for hard-tanh, 2 for
            hard-sigmoid); ``None`` for soft functions, which have no threshold. Required by
            NANIS (Eq. 15).
        affine: ``(a, b, k)`` when ``h(x) = a + b * clamp(k x, -1, 1)`` and
            ``u(x) = a + b k x``. Hard-tanh is ``(0, 1, 1)`` and hard-sigmoid ``(0.5, 0.5, 0.5)``;
            the fused path (:mod:`noisyact.fused`) handles exactly this family.
        bounds: ``(lo, hi)``, the range of h (``clip_output`` clips to it); ``None`` if unknown.
    """

    name: str
    h: Callable[[Tensor], Tensor]
    u: Callable[[Tensor], Tensor]
    threshold: float | None = None
    affine: tuple[float, float, float] | None = None
    bounds: tuple[float, float] | None = None


HARD_TANH = Saturating("hard_tanh", hard_tanh, _identity, threshold=1.0, affine=(0.0, 1.0, 1.0),
                       bounds=(-1.0, 1.0))
HARD_SIGMOID = Saturating(
    "hard_sigmoid", hard_sigmoid, linear_sigmoid, threshold=2.0, affine=(0.5, 0.5, 0.5),
    bounds=(0.0, 1.0),
)
TANH = Saturating("tanh", torch.tanh, _identity, bounds=(-1.0, 1.0))
SIGMOID = Saturating("sigmoid", torch.sigmoid, linear_sigmoid, bounds=(0.0, 1.0))

#: torch's own hard-sigmoid (``nn.Hardsigmoid``: clip(x/6 + 1/2, 0, 1), saturating at |x| >= 3),
#: as a generic saturating unit; not the paper's (slope 1/4). ``noisify`` converts
#: ``nn.Hardsigmoid``/``nn.Hardswish`` to it, keeping the function of the model.
TORCH_HARDSIGMOID = Saturating(
    "torch_hardsigmoid", torch.nn.functional.hardsigmoid, lambda x: x / 6.0 + 0.5, threshold=3.0,
    affine=(0.5, 0.5, 1.0 / 3.0), bounds=(0.0, 1.0),
)
