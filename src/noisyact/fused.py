r"""Fused path for the hard functions (every variant of :mod:`noisyact.variants`).

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

The input-noise variants compute h(k(x + σ_in ξ)) with σ_in of the variant; for a σ_in that
depends on x and p (``"eq9"``, ``"authors"``), ∂φ/∂x = h'·(1 + ξ ∂σ_in/∂x) and
∂φ/∂p = h'·ξ ∂σ_in/∂p.

A kernel reads its variant from a :class:`UnitKind` (a static, hashable argument: each compiled
kernel is specialised to it) and its tensors from a :class:`UnitTensors` (p, c, hp); the terms of
Eqs. 8-12 shared by the forward and backward kernels are the named fields of :class:`Terms`.

The backward kernel gives first derivatives only (:func:`first_order_backward`): a backward with
``create_graph=True`` is refused with an error that names the reference path
(:func:`set_fused_mode` ``("off")``), which has higher derivatives.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .compiler import fused_mode, run_kernel, set_fused_mode
from .noise import draw_keys, normal_like, uses_counter_noise
from .variants import VARIANTS, Variant, get_variant

__all__ = [
    "Terms",
    "UnitGrad",
    "UnitKind",
    "UnitTensors",
    "constants",
    "enabled_for",
    "first_order_backward",
    "fused_mode",
    "in_functorch_transform",
    "kernel_noise",
    "noisy_unit",
    "run_kernel",
    "set_fused_mode",
    "unit_backward",
    "unit_forward",
    "unit_kind",
]


DOUBLE_BACKWARD = (
    "noisyact: the fused path computes first derivatives only, and this backward was asked to "
    "build a graph (create_graph=True, e.g. for a second derivative); call "
    "noisyact.set_fused_mode(\"off\") to use the reference path, which has them all"
)


def first_order_backward(backward):  # type: ignore[no-untyped-def]
    """Decorate the ``backward`` of a fused :class:`torch.autograd.Function`: run it without
    building a graph (as ``once_differentiable``), and refuse with a clear error a backward that
    must build one (``create_graph=True``), which would otherwise give a second derivative of
    zero or ``None`` without a word."""
    inner = once_differentiable(backward)

    @functools.wraps(backward)
    def wrapped(ctx, *grads):  # type: ignore[no-untyped-def]
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD)
        return inner(ctx, *grads)

    return wrapped


def in_functorch_transform() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jacrev, ...) is running: the fused
    Functions do not support them, so the reference path runs instead. Read through a private
    ATen flag where it exists (torch 2.x); without it, the transform fails with torch's error."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def enabled_for(x: Tensor, c: object) -> bool:
    """Whether the fused path handles this call (else the reference path does)."""
    if fused_mode() == "off" or x.numel() == 0:
        return False
    if torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if in_functorch_transform():
        return False
    return not (isinstance(c, Tensor) and c.requires_grad)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@dataclass(frozen=True)
class UnitKind:
    """What a kernel computes for one unit (a static argument: hashable, compiled into the
    kernel): its variant and, for the output-noise variants, whether φ is clipped to the range
    of h (the input-noise variants return h(·), already in its range)."""

    variant: Variant
    clip: bool = False


#: A hard unit without noise ("hard"): NAN with c = 0 and α = 1 gives h(x) exactly.
NOISELESS = UnitKind(VARIANTS["NAN"])


def unit_kind(variant: str | Variant, clip_output: bool = False) -> UnitKind:
    """The :class:`UnitKind` of a variant (``clip_output`` applies to output noise only)."""
    v = get_variant(variant)
    return UnitKind(v, clip_output and v.output_noise)


class UnitTensors(NamedTuple):
    """The tensors of one unit in a kernel: p (zeros where the variant has none), c (0-dim) and
    hp = [α, a, b, k] of h = a + b·clamp(kx, −1, 1) (:func:`constants`)."""

    p: Tensor
    c: Tensor
    hp: Tensor


class Terms(NamedTuple):
    """The terms of Eqs. 8-12 for h = a + b·clamp(kx), shared by forward and backward
    (all in the compute dtype)."""

    xf: Tensor  # x
    alpha: Tensor
    a: Tensor
    b: Tensor
    k: Tensor
    kx: Tensor
    t: Tensor  # clamp(kx, −1, 1)
    delta: Tensor  # ∆ = h − u = b (t − kx), Eq. 8
    sg: Tensor  # g(p∆), g = sigmoid
    s: Tensor  # g(p∆) − 0.5
    c: Tensor
    sigma: Tensor  # σ(x) = c s², Eq. 9


class UnitGrad(NamedTuple):
    """φ and its element-wise derivatives for one ξ."""

    value: Tensor
    dx: Tensor
    dp: Tensor


def _clip_bounds(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The range [a − b, a + b] of h = a + b·clamp(kx, −1, 1) (b > 0)."""
    return a - b, a + b


def _terms(x: Tensor, unit: UnitTensors) -> Terms:
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    hp = unit.hp
    alpha, a, b, k = (hp[i].to(cdt) for i in range(4))
    kx = k * xf
    t = torch.clamp(kx, -1.0, 1.0)
    delta = b * (t - kx)  # Eq. 8
    p = unit.p.to(cdt)
    # p = 0 (a unit without p): z = 0 also at x = ±∞, where p∆ would be 0·∞
    sg = torch.sigmoid(torch.where(p == 0, 0.0, p * delta))
    s = sg - 0.5
    cc = unit.c.to(cdt)
    return Terms(xf, alpha, a, b, k, kx, t, delta, sg, s, cc, cc * s * s)


def _output_value(tm: Terms, xif: Tensor, half: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 12: (φ, d(x), ε) for output noise."""
    alpha = tm.alpha
    sign_alpha = torch.where(1.0 - alpha >= 0, 1.0, -1.0)
    d = torch.where(tm.xf >= 0, -sign_alpha, sign_alpha)  # d(x), sgn(0) = 1
    eps = xif.abs() if half else xif
    h = tm.a + tm.b * tm.t
    # αh + (1 − α)u, h itself at α = 1 (u(±∞) = ±∞ would give 0·∞), as functional.blend
    mixed = torch.where(alpha == 1.0, h, alpha * h + (1.0 - alpha) * (tm.a + tm.b * tm.kx))
    value = mixed + d * tm.sigma * eps
    return value, d, eps


def _authors_ratio(tm: Terms, p: Tensor, xif: Tensor) -> tuple[Tensor, Tensor]:
    """(r, 1/(|ξ| + 1e-10)) with r = p|∆| / (|ξ| + 1e-10), the argument of the authors' σ."""
    den = xif.abs() + 1e-10
    return p * tm.delta.abs() / den, 1.0 / den


def _input_sigma(v: Variant, tm: Terms, p: Tensor, xif: Tensor) -> Tensor:
    """σ_in of the input-noise variants (Eqs. 14, 15 and the authors' NANIL)."""
    if v.sigma == "fixed":  # NANI
        return tm.c
    if v.sigma == "eq9":  # NANIL
        return tm.sigma
    if v.sigma == "authors":  # c·softplus(p|∆| / (|ξ| + 1e-10)), as the reference path
        return torch.nn.functional.softplus(p * tm.delta.abs() / (xif.abs() + 1e-10)) * tm.c
    # "saturated", NANIS (Eq. 15): |x| >= x_t <=> |kx| >= 1
    return tm.c * (tm.kx.abs() >= 1.0).to(tm.kx.dtype)


def unit_forward(x: Tensor, xi: Tensor, unit: UnitTensors, kind: UnitKind) -> Tensor:
    """φ(x, ξ) in the compute dtype (the building block of every fused kernel).

    Output noise (Eq. 12): φ = αh + (1 − α)u + dσε, ε = |ξ| if half-normal else ξ, clipped to
    the range of h with ``kind.clip``. Input noise: φ = h(x + σ_in ξ), σ_in of the variant.
    """
    tm = _terms(x, unit)
    xif = xi.to(tm.xf.dtype)
    v = kind.variant
    if v.output_noise:
        value = _output_value(tm, xif, v.half_normal)[0]
        if kind.clip:
            lo, hi = _clip_bounds(tm.a, tm.b)
            value = torch.clamp(value, lo, hi)
        return value
    sigma_in = _input_sigma(v, tm, unit.p.to(tm.kx.dtype), xif)
    return tm.a + tm.b * torch.clamp(tm.k * (tm.xf + sigma_in * xif), -1.0, 1.0)


def _output_backward(tm: Terms, p: Tensor, xif: Tensor, kind: UnitKind) -> UnitGrad:
    value, d, eps = _output_value(tm, xif, kind.variant.half_normal)
    bk = tm.b * tm.k
    inside = ((tm.kx >= -1.0) & (tm.kx <= 1.0)).to(tm.kx.dtype)
    sigma_z = 2.0 * tm.c * tm.s * tm.sg * (1.0 - tm.sg)  # ∂σ/∂(p∆)
    m = d * eps * sigma_z
    dx = bk * (tm.alpha * inside + (1.0 - tm.alpha)) + m * p * bk * (inside - 1.0)
    dp = m * tm.delta
    if kind.clip:
        # zero where the clip is active (as torch.clamp: passed through on the bounds)
        lo, hi = _clip_bounds(tm.a, tm.b)
        kept = ((value >= lo) & (value <= hi)).to(value.dtype)
        return UnitGrad(torch.clamp(value, lo, hi), dx * kept, dp * kept)
    return UnitGrad(value, dx, dp)


def _input_backward(tm: Terms, p: Tensor, xif: Tensor, v: Variant) -> UnitGrad:
    bk = tm.b * tm.k
    kz = tm.k * (tm.xf + _input_sigma(v, tm, p, xif) * xif)
    value = tm.a + tm.b * torch.clamp(kz, -1.0, 1.0)
    h_z = bk * ((kz >= -1.0) & (kz <= 1.0)).to(tm.kx.dtype)
    if v.sigma in ("fixed", "saturated"):  # σ_in has no x or p dependence (a.e.)
        return UnitGrad(value, h_z, torch.zeros_like(value))
    # ∂∆/∂x = bk (1[|kx| <= 1] − 1)
    d_delta = bk * (((tm.kx >= -1.0) & (tm.kx <= 1.0)).to(tm.kx.dtype) - 1.0)
    if v.sigma == "eq9":
        sigma_z = 2.0 * tm.c * tm.s * tm.sg * (1.0 - tm.sg)  # ∂σ/∂(p∆)
        dsig_x, dsig_p = sigma_z * p * d_delta, sigma_z * tm.delta
    else:  # "authors": σ = c softplus(r), r = p|∆|/(|ξ| + 1e-10), softplus' = sigmoid
        r, inv = _authors_ratio(tm, p, xif)
        q = tm.c * torch.sigmoid(r) * inv
        dsig_x, dsig_p = q * p * torch.sign(tm.delta) * d_delta, q * tm.delta.abs()
    return UnitGrad(value, h_z * (1.0 + xif * dsig_x), h_z * xif * dsig_p)


def unit_backward(x: Tensor, xi: Tensor, unit: UnitTensors, kind: UnitKind) -> UnitGrad:
    """(φ, ∂φ/∂x, ∂φ/∂p) element-wise for the same ξ, in the compute dtype.

    With ``kind.clip`` both derivatives are zero where the clip is active (as the gradient of
    :func:`torch.clamp`: passed through on the bounds themselves)."""
    tm = _terms(x, unit)
    xif = xi.to(tm.xf.dtype)
    p = unit.p.to(tm.kx.dtype)
    if kind.variant.output_noise:
        return _output_backward(tm, p, xif, kind)
    return _input_backward(tm, p, xif, kind.variant)


def kernel_noise(xi: Tensor | None, key: Tensor | None,
                 shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Inside a kernel: the given ξ, or ξ of ``shape`` generated from ``key``
    (:func:`noisyact.noise.normal_like`); exactly one of ``xi`` and ``key`` is given."""
    if xi is not None:
        return xi
    assert key is not None
    return normal_like(shape, key)


def _forward_kernel(x: Tensor, xi: Tensor | None, key: Tensor | None, unit: UnitTensors,
                    kind: UnitKind) -> Tensor:
    return unit_forward(x, kernel_noise(xi, key, x.shape), unit, kind).to(x.dtype)


def _backward_kernel(g: Tensor, x: Tensor, xi: Tensor | None, key: Tensor | None,
                     unit: UnitTensors, kind: UnitKind,
                     want_p: bool) -> tuple[Tensor, Tensor | None]:
    """(grad_x, grad·∂φ/∂p per element or None). The sum over the non-p axes is left to the
    caller: fused into this loop nest it would be a second pass (an outer reduction)."""
    _, dx, dp = unit_backward(x, kernel_noise(xi, key, x.shape), unit, kind)
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


class _Noise(NamedTuple):
    """Where ξ comes from: given (``xi``), regenerated from a saved generator state (``regen``:
    (state, device), with ``xi`` dropped after forward), or generated inside both kernels from
    ``key`` (nothing but x is saved)."""

    xi: Tensor | None
    key: Tensor | None
    regen: tuple[Tensor, torch.device] | None


class _NoisyUnit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x3, p3, c, hp, noise, kind):  # type: ignore[override]
        out = run_kernel(_forward_kernel, x3, noise.xi, noise.key, UnitTensors(p3, c, hp),
                         static=(kind,), inline=True)
        ctx.kind = kind
        saved_xi = noise.xi if noise.regen is None else None
        ctx.save_for_backward(x3, p3, saved_xi, noise.key, c, hp)
        ctx.regen = noise.regen
        return out

    @staticmethod
    @first_order_backward
    def backward(ctx, grad):  # type: ignore[override]
        x3, p3, xi3, key, c, hp = ctx.saved_tensors
        if ctx.regen is not None:
            state, device = ctx.regen
            gen = torch.Generator(device=device)
            gen.set_state(state)
            xi3 = torch.randn(x3.shape, dtype=x3.dtype, device=x3.device, generator=gen)
        want_p = ctx.needs_input_grad[1] and ctx.kind.variant.learned_p
        gx, gp = run_kernel(_backward_kernel, grad.contiguous(), x3, xi3, key,
                            UnitTensors(p3, c, hp), static=(ctx.kind, want_p), inline=True)
        if gp is not None:
            gp = gp.sum(dim=(0, 2), keepdim=True).to(p3.dtype)
        return gx, gp, None, None, None, None


def noisy_unit(
    x: Tensor,
    p: Tensor | None,
    *,
    variant: str | Variant,
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
    out = _NoisyUnit.apply(x3, p3, c_t, hp, _Noise(xi3, key, regen),
                           unit_kind(variant, clip_output))
    return out.view(x.shape)
