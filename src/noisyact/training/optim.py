"""Graves' (2013) RMSProp, the optimiser of the NTM, dl4mt and arctic-captions code.

    n ← ρ n + (1 − ρ) g²,   ḡ ← ρ ḡ + (1 − ρ) g,
    Δ ← μ Δ − η g / √(n − ḡ² + ε),   θ ← θ + Δ

with ρ = 0.95, μ = 0.9, ε = 1e-4 and η = 1e-4 in those codes. ``torch.optim.RMSprop(centered=True,
momentum=0.9)`` differs: it puts ε outside the square root, which changes the step wherever the
gradient variance is small.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


class GravesRMSprop(torch.optim.Optimizer):
    """Centred RMSProp with momentum and ε inside the square root (Graves 2013, Eqs. 38-41).

    Args:
        params: parameters or parameter groups.
        lr: η (default 1e-4).
        rho: decay of the running means of g and g² (default 0.95).
        momentum: μ (default 0.9).
        eps: ε added under the square root (default 1e-4).
        weight_decay: L2 penalty added to the gradient (default 0).

    Example::

        >>> opt = GravesRMSprop(model.parameters(), lr=1e-4)
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, rho: float = 0.95,
                 momentum: float = 0.9, eps: float = 1e-4, weight_decay: float = 0.0) -> None:
        for name, v, lo, hi in (("lr", lr, 0.0, float("inf")), ("rho", rho, 0.0, 1.0),
                                ("momentum", momentum, 0.0, 1.0), ("eps", eps, 0.0, float("inf")),
                                ("weight_decay", weight_decay, 0.0, float("inf"))):
            if not lo <= v < hi or v != v:
                raise ValueError(f"{name} must be in [{lo}, {hi}), got {v}")
        if eps == 0.0:
            raise ValueError("eps must be > 0")
        super().__init__(params, {"lr": lr, "rho": rho, "momentum": momentum, "eps": eps,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            rho, mu, eps, lr = group["rho"], group["momentum"], group["eps"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                st = self.state[p]
                if not st:
                    st["n"] = torch.zeros_like(p)
                    st["g"] = torch.zeros_like(p)
                    st["delta"] = torch.zeros_like(p)
                n, gbar, delta = st["n"], st["g"], st["delta"]
                n.mul_(rho).addcmul_(g, g, value=1 - rho)
                gbar.mul_(rho).add_(g, alpha=1 - rho)
                denom = (n - gbar * gbar).add_(eps).sqrt_()
                delta.mul_(mu).addcdiv_(g, denom, value=-lr)
                p.add_(delta)
        return loss


__all__ = ["GravesRMSprop"]
