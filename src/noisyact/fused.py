r"""Fused path for the output-noise variants (NAN, NAH) of the hard functions.

Written plainly, Algorithm 1 is about ten element-wise passes that each allocate a tensor and are
saved for backward. Here the same math (Eq. 12, and its derivatives) runs as two kernels inside one
:class:`torch.autograd.Function`:

* forward: one pass over (x, ξ) → φ;
* backward: one pass over (grad, x, ξ) → grad_x, with grad_p reduced in the same kernel.

Only x and ξ are saved for backward (``recompute_noise=True`` saves only x and redraws ξ from the
saved generator state). ξ itself is drawn with :func:`torch.randn` exactly as in the reference path,
so both paths give the same numbers for the same seed or generator.

The kernels are compiled with :func:`torch.compile` (dynamic shapes) on first use, which needs a
working compiler (a C++ compiler on CPU, Triton on CUDA); where compilation fails the same kernels
run eagerly. Inside a region that is itself being compiled (``torch.compile`` of a model) the
reference ops are used instead, so that Inductor fuses them with their neighbours.

Every supported family member is ``h(x) = a + b·clamp(k x, −1, 1)``, ``u(x) = a + b k x``:

.. math::

    \Delta &= b\,(\mathrm{clamp}(kx) - kx), \qquad
    \frac{\partial\phi}{\partial x} = bk\,(\alpha m + 1 - \alpha)
        + d\,\epsilon\,\sigma_z\,p\,bk\,(m - 1), \\
    \frac{\partial\phi}{\partial p} &= d\,\epsilon\,\sigma_z\,\Delta, \qquad
    \sigma_z = 2c\,s\,g(z)(1 - g(z)),\ s = g(z) - 0.5,\ z = p\Delta,\ m = 1_{|kx| \le 1}.

The backward kernel is ``once_differentiable``: double backward needs the reference path
(:func:`set_fused_mode` ``("off")``).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "constants",
    "enabled_for",
    "fused_mode",
    "noisy_unit",
    "run_kernel",
    "set_fused_mode",
    "unit_backward",
    "unit_forward",
]

_MODES = ("compile", "eager", "off")
_state: dict[str, Any] = {"mode": os.environ.get("NOISYACT_FUSED", "compile"), "compiled": {}}
if _state["mode"] not in _MODES:
    raise ValueError(f"NOISYACT_FUSED must be one of {_MODES}, got {_state['mode']!r}")


def set_fused_mode(mode: str) -> None:
    """Choose the training path of NAN/NAH on hard functions.

    ``"compile"`` (default): fused autograd function with kernels compiled by ``torch.compile``;
    ``"eager"``: the same fused function with kernels run op by op (no compiler needed);
    ``"off"``: the reference path of :mod:`noisyact.functional` (plain autograd ops).
    Also settable with the environment variable ``NOISYACT_FUSED``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    _state["mode"] = mode


def fused_mode() -> str:
    """The current mode (see :func:`set_fused_mode`)."""
    return str(_state["mode"])


def enabled_for(x: Tensor, c: object) -> bool:
    """Whether the fused path handles this call (else the reference path does)."""
    if _state["mode"] == "off" or x.numel() == 0:
        return False
    if torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    return not (isinstance(c, Tensor) and c.requires_grad)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


#: Kernel code of each variant (hp[5]): output noise (Eq. 12) or which input noise (Eqs. 14, 15).
VARIANT_CODES = {"NAN": 0.0, "NAH": 0.0, "NANI": 1.0, "NANIL": 2.0, "NANIS": 3.0}


def _terms(x: Tensor, p: Tensor, xi: Tensor, c: Tensor, hp: Tensor):
    """Shared terms for h = a + b·clamp(kx); hp = [alpha, a, b, k, half_normal, variant code]."""
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    alpha, a, b, k, half, code = (hp[i].to(cdt) for i in range(6))
    kx = k * xf
    t = torch.clamp(kx, -1.0, 1.0)
    delta = b * (t - kx)  # Eq. 8
    sg = torch.sigmoid(p.to(cdt) * delta)
    s = sg - 0.5
    cc = c.to(cdt)
    sigma = cc * s * s  # Eq. 9
    xif = xi.to(cdt)
    return xf, alpha, a, b, k, half, code, kx, t, delta, sg, s, cc, sigma, xif


def unit_backward(x: Tensor, p: Tensor, xi: Tensor, c: Tensor,
                  hp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(φ, ∂φ/∂x, ∂φ/∂p) element-wise for the same ξ, in the compute dtype.

    Output noise (code 0, Eq. 12): φ = αh + (1 − α)u + dσε. Input noise: φ = h(x + σ_in ξ) with
    σ_in = c (NANI, code 1), σ(x) of Eq. 9 (NANIL, 2), or c·1[|x| >= x_t] (NANIS, 3, Eq. 15).
    """
    xf, alpha, a, b, k, half, code, kx, t, delta, sg, s, cc, sigma, xif = _terms(x, p, xi, c, hp)
    bk = b * k
    inside = ((kx >= -1.0) & (kx <= 1.0)).to(kx.dtype)
    sigma_z = 2.0 * cc * s * sg * (1.0 - sg)  # ∂σ/∂(p∆)
    pf = p.to(kx.dtype)
    # output noise
    sign_alpha = torch.where(1.0 - alpha >= 0, 1.0, -1.0)
    d = torch.where(xf >= 0, -sign_alpha, sign_alpha)
    eps = torch.where(half > 0, xif.abs(), xif)
    out_o = alpha * (a + b * t) + (1.0 - alpha) * (a + b * kx) + d * sigma * eps
    m = d * eps * sigma_z
    dx_o = bk * (alpha * inside + (1.0 - alpha)) + m * pf * bk * (inside - 1.0)
    dp_o = m * delta
    # input noise
    sigma_in = torch.where(code == 1.0, cc,
                           torch.where(code == 2.0, sigma, cc * (kx.abs() >= 1.0).to(kx.dtype)))
    kz = k * (xf + sigma_in * xif)
    out_i = a + b * torch.clamp(kz, -1.0, 1.0)
    h_z = bk * ((kz >= -1.0) & (kz <= 1.0)).to(kx.dtype)
    learned = (code == 2.0).to(kx.dtype)
    dx_i = h_z * (1.0 + learned * xif * sigma_z * pf * bk * (inside - 1.0))
    dp_i = h_z * learned * xif * sigma_z * delta
    output = code == 0.0
    return (torch.where(output, out_o, out_i), torch.where(output, dx_o, dx_i),
            torch.where(output, dp_o, dp_i))


def unit_forward(x: Tensor, p: Tensor, xi: Tensor, c: Tensor, hp: Tensor) -> Tensor:
    """φ(x, ξ) in the compute dtype (the building block of every fused kernel)."""
    xf, alpha, a, b, k, half, code, kx, t, delta, sg, s, cc, sigma, xif = _terms(x, p, xi, c, hp)
    sign_alpha = torch.where(1.0 - alpha >= 0, 1.0, -1.0)
    d = torch.where(xf >= 0, -sign_alpha, sign_alpha)
    eps = torch.where(half > 0, xif.abs(), xif)
    out_o = alpha * (a + b * t) + (1.0 - alpha) * (a + b * kx) + d * sigma * eps
    sigma_in = torch.where(code == 1.0, cc,
                           torch.where(code == 2.0, sigma, cc * (kx.abs() >= 1.0).to(kx.dtype)))
    out_i = a + b * torch.clamp(k * (xf + sigma_in * xif), -1.0, 1.0)
    return torch.where(code == 0.0, out_o, out_i)


def _forward_kernel(x: Tensor, p: Tensor, xi: Tensor, c: Tensor, hp: Tensor) -> Tensor:
    return unit_forward(x, p, xi, c, hp).to(x.dtype)


def _backward_kernel(
    g: Tensor, x: Tensor, p: Tensor, xi: Tensor, c: Tensor, hp: Tensor
) -> tuple[Tensor, Tensor]:
    _, dx, dp = unit_backward(x, p, xi, c, hp)
    gf = g.to(dx.dtype)
    gp = (gf * dp).sum(dim=(0, 2), keepdim=True)
    return (gf * dx).to(x.dtype), gp.to(p.dtype)


def run_kernel(kernel: Callable[..., Any], *args: Any) -> Any:
    """Run a pure tensor function, compiled once per function in ``"compile"`` mode.

    If compilation fails (no working compiler), warn once and run every kernel eagerly from then
    on: the numbers are the same, only slower.
    """
    if _state["mode"] == "compile":
        compiled = _state["compiled"].get(kernel)
        if compiled is None:
            compiled = torch.compile(kernel, dynamic=True, fullgraph=True)
            _state["compiled"][kernel] = compiled
        try:
            return compiled(*args)
        except Exception as exc:
            warnings.warn(
                f"noisyact: compiling the fused kernels failed ({type(exc).__name__}: {exc}); "
                "running them eagerly", RuntimeWarning, stacklevel=2,
            )
            _state["mode"] = "eager"
    return kernel(*args)


@functools.lru_cache(maxsize=256)
def constants(variant: str, alpha: float, a: float, b: float, k: float, dtype: torch.dtype,
              device: torch.device) -> Tensor:
    """The constant kernel argument hp = [alpha, a, b, k, half_normal, code] (cached)."""
    half = 1.0 if variant == "NAH" else 0.0
    return torch.tensor([alpha, a, b, k, half, VARIANT_CODES[variant]], dtype=dtype,
                        device=device)


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None
                                             else torch.cuda.current_device()]
    raise RuntimeError(f"recompute_noise needs an explicit generator on device {device}")


class _OutputNoise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x3, p3, xi3, c, hp, regen):  # type: ignore[override]
        out = run_kernel(_forward_kernel, x3, p3, xi3, c, hp)
        if regen is None:
            ctx.save_for_backward(x3, p3, xi3, c, hp)
        else:
            ctx.save_for_backward(x3, p3, c, hp)
        ctx.regen = regen
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.regen is None:
            x3, p3, xi3, c, hp = ctx.saved_tensors
        else:
            x3, p3, c, hp = ctx.saved_tensors
            state, device = ctx.regen
            gen = torch.Generator(device=device)
            gen.set_state(state)
            xi3 = torch.randn(x3.shape, dtype=x3.dtype, device=x3.device, generator=gen)
        gx, gp = run_kernel(_backward_kernel, grad.contiguous(), x3, p3, xi3, c, hp)
        return gx, gp, None, None, None, None


def noisy_unit(
    x: Tensor,
    p: Tensor | None,
    *,
    variant: str,
    dim: int,
    affine: tuple[float, float, float],
    alpha: float,
    c: float | Tensor,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    recompute_noise: bool = False,
) -> Tensor:
    """Training-mode φ for ``h = a + b·clamp(kx)``; arguments as in ``noisy_activation``."""
    if p is None:  # NANI, NANIS: σ does not use p
        p = torch.zeros(1, dtype=compute_dtype(x.dtype), device=x.device)
    if p.numel() == 1:
        shape3 = (1, 1, x.numel())
    else:
        d = dim % x.dim()
        shape3 = (math.prod(x.shape[:d]), p.numel(), math.prod(x.shape[d + 1:]))
    p3 = p.reshape(1, -1, 1)
    regen = None
    if noise is None:
        if recompute_noise:
            gen = generator if generator is not None else _default_generator(x.device)
            regen = (gen.get_state(), x.device)
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    cdt = compute_dtype(x.dtype)
    c_t = (
        c.detach().to(device=x.device, dtype=cdt).reshape(())
        if isinstance(c, Tensor)
        else torch.tensor(float(c), dtype=cdt, device=x.device)
    )
    hp = constants(variant, float(alpha), *affine, cdt, x.device)
    x3 = x.contiguous().view(shape3)
    xi3 = noise.to(x.dtype).contiguous().view(shape3)
    out = _OutputNoise.apply(x3, p3, xi3, c_t, hp, regen)
    return out.view(x.shape)
