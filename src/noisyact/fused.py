r"""Fused path for the hard functions (NAN, NAH and the input-noise variants NANI, NANIL, NANIS).

Written plainly, Algorithm 1 is about ten element-wise passes that each allocate a tensor and are
saved for backward. Here the same math (Eq. 12, and its derivatives) runs as two kernels inside one
:class:`torch.autograd.Function`:

* forward: one pass over x → φ, with ξ generated inside the kernel;
* backward: one pass over (grad, x) → grad_x and the per-element ∂φ/∂p · grad, with the same ξ
  generated again; grad_p is their sum.

ξ is the counter noise of :mod:`noisyact.noise` (noise source ``"kernel"``, default): computed
per element from its index and a per-call key drawn from the generator, so it costs no memory
traffic, is parallel on a CPU (:func:`torch.randn` is one sequential stream there), and only x is
saved for backward. With ``set_noise_source("torch")`` ξ is drawn with :func:`torch.randn` as in
the reference path (the same numbers for the same seed), read by both kernels and saved for
backward (``recompute_noise=True`` saves only x and redraws ξ from the saved generator state).
Given ``noise=`` explicitly, both kernels use it.

The kernels are compiled by Inductor on first use (:mod:`noisyact.compiler`), which needs a
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

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .compiler import fused_mode, run_kernel, set_fused_mode
from .noise import draw_keys, normal_like, uses_counter_noise

__all__ = [
    "constants",
    "enabled_for",
    "fused_mode",
    "kernel_noise",
    "noisy_unit",
    "run_kernel",
    "set_fused_mode",
    "unit_backward",
    "unit_code",
    "unit_forward",
]


def enabled_for(x: Tensor, c: object) -> bool:
    """Whether the fused path handles this call (else the reference path does)."""
    if fused_mode() == "off" or x.numel() == 0:
        return False
    if torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    return not (isinstance(c, Tensor) and c.requires_grad)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


#: Kernel code of each variant: output noise (Eq. 12) or which input noise (Eqs. 14, 15).
#: Codes are static (Python) arguments, so each compiled kernel is specialised to its variant.
VARIANT_CODES = {"NAN": 0, "NAH": 0, "NANI": 1, "NANIL": 2, "NANIS": 3}
#: Added to the code of an output-noise unit whose output is clipped to the range of h.
CLIP_CODE = 4


def unit_code(variant: str, clip_output: bool = False) -> tuple[int, bool]:
    """(variant code, half-normal) for the kernels. ``clip_output`` adds :data:`CLIP_CODE` for
    the output-noise variants (the input-noise variants return h(·), already in its range)."""
    code = VARIANT_CODES[variant]
    if clip_output and code == 0:
        code += CLIP_CODE
    return code, variant == "NAH"


def _clip_bounds(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The range [a − b, a + b] of h = a + b·clamp(kx, −1, 1) (b > 0)."""
    return a - b, a + b


def _terms(x: Tensor, p: Tensor, c: Tensor, hp: Tensor):
    """Shared terms for h = a + b·clamp(kx); hp = [alpha, a, b, k]."""
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    alpha, a, b, k = (hp[i].to(cdt) for i in range(4))
    kx = k * xf
    t = torch.clamp(kx, -1.0, 1.0)
    delta = b * (t - kx)  # Eq. 8
    sg = torch.sigmoid(p.to(cdt) * delta)
    s = sg - 0.5
    cc = c.to(cdt)
    return xf, alpha, a, b, k, kx, t, delta, sg, s, cc, cc * s * s  # last: σ(x), Eq. 9


def _output_value(xf: Tensor, alpha: Tensor, a: Tensor, b: Tensor, kx: Tensor, t: Tensor,
                  sigma: Tensor, xif: Tensor, half: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 12: (φ, d(x), ε) for output noise."""
    sign_alpha = torch.where(1.0 - alpha >= 0, 1.0, -1.0)
    d = torch.where(xf >= 0, -sign_alpha, sign_alpha)  # d(x), sgn(0) = 1
    eps = xif.abs() if half else xif
    return alpha * (a + b * t) + (1.0 - alpha) * (a + b * kx) + d * sigma * eps, d, eps


def _input_kz(code: int, xf: Tensor, k: Tensor, cc: Tensor, sigma: Tensor, kx: Tensor,
              xif: Tensor) -> Tensor:
    """k·(x + σ_in ξ) for the input-noise variants (Eqs. 14, 15)."""
    if code == 1:  # NANI: fixed σ = c
        sigma_in = cc
    elif code == 2:  # NANIL: σ(x) of Eq. 9
        sigma_in = sigma
    else:  # NANIS (Eq. 15): |x| >= x_t <=> |kx| >= 1
        sigma_in = cc * (kx.abs() >= 1.0).to(kx.dtype)
    return k * (xf + sigma_in * xif)


def unit_forward(x: Tensor, p: Tensor, xi: Tensor, c: Tensor, hp: Tensor, code: int,
                 half: bool) -> Tensor:
    """φ(x, ξ) in the compute dtype (the building block of every fused kernel).

    Output noise (code 0, Eq. 12): φ = αh + (1 − α)u + dσε, ε = |ξ| if ``half`` else ξ. Input
    noise: φ = h(x + σ_in ξ) with σ_in = c (NANI, 1), σ(x) (NANIL, 2), c·1[|x| >= x_t] (NANIS, 3).
    Code 4 (:data:`CLIP_CODE`): output noise with φ clipped to the range of h.
    """
    xf, alpha, a, b, k, kx, t, _, _, _, cc, sigma = _terms(x, p, c, hp)
    xif = xi.to(xf.dtype)
    if code == CLIP_CODE:
        lo, hi = _clip_bounds(a, b)
        return torch.clamp(_output_value(xf, alpha, a, b, kx, t, sigma, xif, half)[0], lo, hi)
    if code == 0:
        return _output_value(xf, alpha, a, b, kx, t, sigma, xif, half)[0]
    return a + b * torch.clamp(_input_kz(code, xf, k, cc, sigma, kx, xif), -1.0, 1.0)


def unit_backward(x: Tensor, p: Tensor, xi: Tensor, c: Tensor, hp: Tensor, code: int,
                  half: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(φ, ∂φ/∂x, ∂φ/∂p) element-wise for the same ξ, in the compute dtype.

    With :data:`CLIP_CODE` both derivatives are zero where the clip is active (as the
    gradient of :func:`torch.clamp`: passed through on the bounds themselves)."""
    if code == CLIP_CODE:
        value, dx, dp = unit_backward(x, p, xi, c, hp, 0, half)
        lo, hi = _clip_bounds(hp[1].to(value.dtype), hp[2].to(value.dtype))
        kept = ((value >= lo) & (value <= hi)).to(value.dtype)
        return torch.clamp(value, lo, hi), dx * kept, dp * kept
    xf, alpha, a, b, k, kx, t, delta, sg, s, cc, sigma = _terms(x, p, c, hp)
    xif = xi.to(xf.dtype)
    bk = b * k
    inside = ((kx >= -1.0) & (kx <= 1.0)).to(kx.dtype)
    sigma_z = 2.0 * cc * s * sg * (1.0 - sg)  # ∂σ/∂(p∆)
    pf = p.to(kx.dtype)
    if code == 0:
        value, d, eps = _output_value(xf, alpha, a, b, kx, t, sigma, xif, half)
        m = d * eps * sigma_z
        dx = bk * (alpha * inside + (1.0 - alpha)) + m * pf * bk * (inside - 1.0)
        return value, dx, m * delta
    kz = _input_kz(code, xf, k, cc, sigma, kx, xif)
    value = a + b * torch.clamp(kz, -1.0, 1.0)
    h_z = bk * ((kz >= -1.0) & (kz <= 1.0)).to(kx.dtype)
    if code != 2:
        return value, h_z, torch.zeros_like(value)
    dx = h_z * (1.0 + xif * sigma_z * pf * bk * (inside - 1.0))
    return value, dx, h_z * xif * sigma_z * delta


def kernel_noise(xi: Tensor | None, key: Tensor | None,
                 shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Inside a kernel: the given ξ, or ξ of ``shape`` generated from ``key``
    (:func:`noisyact.noise.normal_like`); exactly one of ``xi`` and ``key`` is given."""
    if xi is not None:
        return xi
    assert key is not None
    return normal_like(shape, key)


def _forward_kernel(x: Tensor, p: Tensor, xi: Tensor | None, key: Tensor | None, c: Tensor,
                    hp: Tensor, code: int, half: bool) -> Tensor:
    return unit_forward(x, p, kernel_noise(xi, key, x.shape), c, hp, code, half).to(x.dtype)


def _backward_kernel(g: Tensor, x: Tensor, p: Tensor, xi: Tensor | None, key: Tensor | None,
                     c: Tensor, hp: Tensor, code: int, half: bool,
                     want_p: bool) -> tuple[Tensor, Tensor | None]:
    """(grad_x, grad·∂φ/∂p per element or None). The sum over the non-p axes is left to the
    caller: fused into this loop nest it would be a second pass (an outer reduction)."""
    _, dx, dp = unit_backward(x, p, kernel_noise(xi, key, x.shape), c, hp, code, half)
    gf = g.to(dx.dtype)
    return (gf * dx).to(x.dtype), (gf * dp if want_p else None)


@functools.lru_cache(maxsize=256)
def constants(alpha: float, a: float, b: float, k: float, dtype: torch.dtype,
              device: torch.device) -> Tensor:
    """The constant kernel argument hp = [alpha, a, b, k] (cached per dtype and device)."""
    return torch.tensor([alpha, a, b, k], dtype=dtype, device=device)


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None
                                             else torch.cuda.current_device()]
    raise RuntimeError(f"recompute_noise needs an explicit generator on device {device}")


class _NoisyUnit(torch.autograd.Function):
    """ξ is either given (``xi3``), regenerated from a saved generator state (``regen``), or
    generated inside both kernels from ``key`` (nothing but x is saved)."""

    @staticmethod
    def forward(ctx, x3, p3, xi3, key, c, hp, regen, code, half):  # type: ignore[override]
        out = run_kernel(_forward_kernel, x3, p3, xi3, key, c, hp, static=(code, half),
                         inline=True)
        ctx.code, ctx.half = code, half
        saved_xi = xi3 if regen is None else None
        ctx.save_for_backward(x3, p3, saved_xi, key, c, hp)
        ctx.regen = regen
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x3, p3, xi3, key, c, hp = ctx.saved_tensors
        if ctx.regen is not None:
            state, device = ctx.regen
            gen = torch.Generator(device=device)
            gen.set_state(state)
            xi3 = torch.randn(x3.shape, dtype=x3.dtype, device=x3.device, generator=gen)
        # NANI, NANIS: σ has no p
        want_p = ctx.needs_input_grad[1] and ctx.code in (0, 2, CLIP_CODE)
        gx, gp = run_kernel(_backward_kernel, grad.contiguous(), x3, p3, xi3, key, c, hp,
                            static=(ctx.code, ctx.half, want_p), inline=True)
        if gp is not None:
            gp = gp.sum(dim=(0, 2), keepdim=True).to(p3.dtype)
        return gx, gp, None, None, None, None, None, None, None


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
    clip_output: bool = False,
) -> Tensor:
    """Training-mode φ for ``h = a + b·clamp(kx)``; arguments as in ``noisy_activation``.

    Without ``noise``, ξ comes from :func:`noisyact.noise.counter_normal` inside the kernels
    (noise source ``"kernel"``) or from :func:`torch.randn` (``"torch"``).
    """
    if p is None:  # NANI, NANIS: σ does not use p
        p = torch.zeros(1, dtype=compute_dtype(x.dtype), device=x.device)
    if p.numel() == 1:
        shape3 = (1, 1, x.numel())
    else:
        d = dim % x.dim()
        shape3 = (math.prod(x.shape[:d]), p.numel(), math.prod(x.shape[d + 1:]))
    p3 = p.reshape(1, -1, 1)
    regen = key = xi3 = None
    if noise is None and uses_counter_noise(x.numel()):
        key = draw_keys(1, generator, x.device)[0]
    else:
        if noise is None:
            if recompute_noise:
                gen = generator if generator is not None else _default_generator(x.device)
                regen = (gen.get_state(), x.device)
            noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        xi3 = noise.to(x.dtype).contiguous().view(shape3)
    cdt = compute_dtype(x.dtype)
    c_t = (
        c.detach().to(device=x.device, dtype=cdt).reshape(())
        if isinstance(c, Tensor)
        else torch.tensor(float(c), dtype=cdt, device=x.device)
    )
    hp = constants(float(alpha), *affine, cdt, x.device)
    x3 = x.contiguous().view(shape3)
    out = _NoisyUnit.apply(x3, p3, xi3, key, c_t, hp, regen, *unit_code(variant, clip_output))
    return out.view(x.shape)
