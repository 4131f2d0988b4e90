r"""The paper's equations as pure functions: the reference path.

Every noisy activation of Gulcehre et al. (2016) is built here from a saturating function h and its
linearisation u (:mod:`noisyact.saturating`):

.. math::

    \Delta &= h(x) - u(x)                                        && \text{(Eq. 8)} \\
    \sigma(x) &= c\,(g(p\Delta) - 0.5)^2,\quad g = \mathrm{sigmoid} && \text{(Eq. 9)} \\
    d(x) &= -\operatorname{sgn}(x)\operatorname{sgn}(1 - \alpha),\quad \operatorname{sgn}(0) = 1 \\
    \phi(x, \xi) &= \alpha h(x) + (1 - \alpha) u(x) + d(x)\sigma(x)\epsilon  && \text{(Eq. 12)} \\
    \phi(x, \xi) &= h(x + \sigma\xi)                                 && \text{(Eq. 14)} \\
    \phi(x, \xi) &= h(x + 1_{|x| \ge |x_t|}\,\sigma\xi)              && \text{(Eq. 15)}

with :math:`\xi \sim N(0, 1)`, :math:`\epsilon = \xi` (NAN) or :math:`|\xi|` (NAH, Algorithm 1).

========  ===========================================  ============================================
variant   training (noise ξ drawn per element)           eval (no random op)
========  ===========================================  ============================================
NAN       Eq. 12, ε = ξ                                  αh + (1−α)u                        (Eq. 13)
NAH       Eq. 12, ε = |ξ|  (Algorithm 1)                 αh + (1−α)u + dσ·√(2/π)            (Eq. 13)
NANI      Eq. 14, σ = c fixed                            h(x)
NANIL     Eq. 14, σ = σ(x) of Eq. 9 (learned p)          h(x)
NANIS     Eq. 15, σ = c, only where |x| >= x_t          h(x)
NANIL-    Eq. 14, σ = c·softplus(p|∆| / (|ξ| + 1e-10))   h(x)
authors   (the authors' code, see below)
========  ===========================================  ============================================

The variants and their properties are defined once, in :mod:`noisyact.variants`; the tuples
:data:`VARIANTS`, :data:`OUTPUT_NOISE_VARIANTS`, :data:`INPUT_NOISE_VARIANTS` and
:data:`LEARNED_P_VARIANTS` here are derived from it (kept for compatibility).

NANIL with σ(x) of Eq. 9 (the paper's definition, the default) injects almost no noise: σ is at
most c/4, and about c (p∆/4)² near the threshold, so it never moves a saturated input back into
the linear regime (0 of >50k saturated elements change at c = 0.5; p gets no gradient inside the
recurrent layers). ``"NANIL-authors"`` is the σ of the authors' code, which depends on the sampled
ξ and is non-zero in the linear regime as well (c·ln 2 where ∆ = 0).

With α > 1 the output-noise variants are **unbounded** by design: the (1 − α)·u(x) term of Eq. 12
keeps growing linearly past saturation, with slope −(α − 1)·u'(x) (hard-sigmoid with α = 1.1: −1.35
at x = 100 in eval). This is the paper's Eq. 12; ``clip_output=True`` clips φ to the range of h
(as the authors' paper-era code did), with zero gradient where the clip is active.

For NAN and NAH the eval output is the exact expectation of the training output over ξ. For the
input-noise variants the paper replaces ξ by its mean (ξ → 0), giving h(x); this equals the
expectation wherever the input noise cannot cross a kink of h (σ = 0 in the linear regime of
NANIL/NANIS, far inside saturation), and differs from it by O(σ) near the thresholds.

Computations for float16/bfloat16 inputs run in float32 (σ(x) is a difference of nearly equal
numbers) and the result is cast back. ``c = 0`` gives exactly the noise-free function, never a NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import fused
from ._validation import check_fits, check_hyperparameters
from .fused import compute_dtype
from .noise import draw_keys, normal_like, uses_counter_noise
from .saturating import HARD_SIGMOID, HARD_TANH, SIGMOID, TANH, Saturating
from .variants import VARIANTS as _REGISTRY
from .variants import Variant, get_variant

__all__ = [
    "HALF_NORMAL_MEAN",
    "INPUT_NOISE_VARIANTS",
    "LEARNED_P_VARIANTS",
    "OUTPUT_NOISE_VARIANTS",
    "VARIANTS",
    "authors_noise_scale",
    "broadcast_p",
    "default_alpha",
    "default_c",
    "draw_noise",
    "noise_direction",
    "noise_scale",
    "noisy_activation",
    "noisy_hard_sigmoid",
    "noisy_hard_tanh",
    "noisy_sigmoid",
    "noisy_tanh",
    "output_noise_expectation",
    "saturation",
]

#: Names of every variant (derived from :data:`noisyact.variants.VARIANTS`).
VARIANTS = tuple(_REGISTRY)
OUTPUT_NOISE_VARIANTS = tuple(n for n, v in _REGISTRY.items() if v.output_noise)
INPUT_NOISE_VARIANTS = tuple(n for n, v in _REGISTRY.items() if not v.output_noise)
#: Variants whose noise scale uses the learned p (σ(x) of Eq. 9, or the authors' NANIL σ).
LEARNED_P_VARIANTS = tuple(n for n, v in _REGISTRY.items() if v.learned_p)
#: E|ξ| for ξ ~ N(0, 1): the half-normal mean √(2/π) used by NAH at test time (Eq. 13).
HALF_NORMAL_MEAN = math.sqrt(2.0 / math.pi)


def default_alpha(fn: Saturating) -> float:
    """α used when none is given: the authors' code defaults (NTanhP 1.15, NSigmoidP 1.1), else 1."""
    return {"hard_tanh": 1.15, "hard_sigmoid": 1.1}.get(fn.name, 1.0)


def default_c(variant: str | Variant) -> float:
    """c used when none is given: 0.05 for NANI (Table 3), 0.25 for NANIS and NANIL-authors
    (authors' code), else 0.5 (``Variant.default_c``)."""
    return get_variant(variant).default_c


def saturation(h_x: Tensor, u_x: Tensor) -> Tensor:
    """Eq. 8: ∆ = h(x) − u(x), zero in the linear regime."""
    return h_x - u_x


def blend(h_x: Tensor, u_x: Tensor, alpha: float) -> Tensor:
    """αh(x) + (1 − α)u(x), the noiseless part of Eqs. 12-13; h itself at α = 1, so that
    u(±∞) = ±∞ gives h(±∞) and not 0·∞ = NaN."""
    if alpha == 1.0:
        return h_x
    return alpha * h_x + (1.0 - alpha) * u_x


def noise_scale(delta: Tensor, p: Tensor, c: float | Tensor) -> Tensor:
    """Eq. 9: σ(x) = c (sigmoid(p ∆) − 0.5)², in [0, c/4), zero where ∆ = 0."""
    s = torch.sigmoid(p * delta) - 0.5
    if isinstance(c, float):  # the refinement lets TorchScript type c
        return (s * s) * c
    return (s * s) * c


def authors_noise_scale(delta: Tensor, p: Tensor, c: float | Tensor, xi: Tensor) -> Tensor:
    """σ of NANIL in the authors' code: c·softplus(p·|∆| / (|ξ| + 1e-10)).

    Not Eq. 9: it depends on the sampled ξ (for large p|∆|/|ξ|, σξ ≈ c p |∆| sign(ξ)) and is
    c·ln 2 in the linear regime (∆ = 0), so the input is noisy everywhere."""
    return torch.nn.functional.softplus(p * delta.abs() / (xi.abs() + 1e-10)) * c


def noise_direction(x: Tensor, alpha: float) -> Tensor:
    """d(x) = −sgn(x) sgn(1 − α) with the paper's sgn(0) = 1 (§4.2)."""
    s_alpha = 1.0 if 1.0 - alpha >= 0.0 else -1.0
    return torch.where(x >= 0, -s_alpha, s_alpha).to(x.dtype)


def broadcast_p(p: Tensor, x: Tensor, dim: int) -> Tensor:
    """View p so that it broadcasts against x: one value, or one per entry of ``x.shape[dim]``."""
    if p.numel() == 1:
        return p.reshape(())
    if x.dim() == 0:
        raise ValueError(
            "p has " + str(p.numel()) + " values but the input is a scalar; use num_parameters=1"
        )
    d = dim if dim >= 0 else dim + x.dim()
    if d < 0 or d >= x.dim():
        raise ValueError("dim=" + str(dim) + " is out of range for an input of shape "
                         + str(list(x.shape)))
    if p.dim() != 1 or p.shape[0] != x.shape[d]:
        raise ValueError(
            "p has shape " + str(list(p.shape)) + " but the input has " + str(x.shape[d])
            + " features along dim " + str(dim) + " (input shape " + str(list(x.shape)) + ")"
        )
    shape = [1] * x.dim()
    shape[d] = p.shape[0]
    return p.reshape(shape)


def draw_noise(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """ξ ~ N(0, 1) with the shape, dtype and device of x (contiguous, in x's logical order).

    Eagerly :func:`torch.randn`. Inside a region compiled by ``torch.compile`` with the noise
    source ``"kernel"`` (default), the counter noise of :mod:`noisyact.noise`, which Inductor
    generates in parallel inside the fused kernel (its own ``randn`` lowering runs one Philox
    stream per element, several times slower on a CPU); with ``fallback_random`` this is the same
    noise as the eager fused path for the same seed.
    """
    if torch.compiler.is_compiling() and uses_counter_noise(x.numel()):
        return normal_like(x.shape, draw_keys(1, generator, x.device)[0]).to(x.dtype)
    return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


def output_noise_expectation(
    x: Tensor, h_x: Tensor, u_x: Tensor, p: Tensor, alpha: float, c: float | Tensor,
    half_normal: bool,
) -> Tensor:
    """Eq. 13: E_ξ[φ(x, ξ)] = αh + (1 − α)u + d σ E[ε] (all arguments in the compute dtype)."""
    out = blend(h_x, u_x, alpha)
    if half_normal:
        sigma = noise_scale(saturation(h_x, u_x), p, c)
        out = out + noise_direction(x, alpha) * sigma * math.sqrt(2.0 / math.pi)
    return out


def _p_for(v: Variant, p: Tensor | None, x: Tensor, dim: int) -> Tensor | None:
    if not v.learned_p:
        return None
    if p is None:
        raise ValueError(f"p is required by variant {v.name!r} (its σ uses it)")
    if not isinstance(p, Tensor):
        raise ValueError(f"p must be a Tensor, got {type(p).__name__}")
    return broadcast_p(p, x, dim)


def noisy_activation(
    x: Tensor,
    p: Tensor | None = None,
    *,
    fn: Saturating,
    variant: str = "NAH",
    alpha: float | None = None,
    c: float | Tensor | None = None,
    training: bool,
    generator: torch.Generator | None = None,
    dim: int = 1,
    noise: Tensor | None = None,
    recompute_noise: bool = False,
    clip_output: bool = False,
) -> Tensor:
    r"""Noisy version of any saturating function ``fn`` = (h, u) (Eqs. 8-15).

    Args:
        x: the pre-activation, any shape, floating point.
        p: learned parameter of σ(x) (Eq. 9), one value or one per feature along ``dim``.
            Required by NAN, NAH, NANIL and NANIL-authors; ignored by NANI and NANIS.
        fn: the pair (h, u), e.g. :data:`noisyact.saturating.HARD_TANH`.
        variant: ``"NAN"``, ``"NAH"``, ``"NANI"``, ``"NANIL"``, ``"NANIS"`` or
            ``"NANIL-authors"`` (:mod:`noisyact.variants`).
        alpha: α of Eq. 12 (output-noise variants). Default: :func:`default_alpha`.
        c: noise scale: c of Eq. 9, or the fixed σ of NANI/NANIS. Default: :func:`default_c`.
        training: draw noise (``True``) or return the test-time value (``False``). Explicit on
            purpose: a functional call never silently picks one.
        generator: optional :class:`torch.Generator` for the noise.
        dim: the feature axis that a per-feature p runs along.
        noise: use this ξ ~ N(0, 1) (shape of x) instead of drawing one.
        recompute_noise: fused path with noise source ``"torch"`` only: save only x for
            backward and redraw ξ from the saved generator state (less memory, one more draw).
            The default counter noise (:mod:`noisyact.noise`) is always regenerated, never
            saved.
        clip_output: clip φ to the range of h (``fn.bounds``: [−1, 1] for hard-tanh, [0, 1]
            for hard-sigmoid), as the authors' paper-era code; the gradient is zero where the
            clip is active, and eval returns the clipped test-time value. Default ``False``
            (Eq. 12 as in the paper: with α > 1 the output is unbounded). A no-op for the
            input-noise variants, whose output h(·) is in range already.

    Returns:
        A tensor of the shape and dtype of x.
    """
    v = get_variant(variant)
    if alpha is None:
        alpha = default_alpha(fn)
    if c is None:
        c = v.default_c
    check_hyperparameters(alpha=alpha, c=c)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point Tensor, got {got}")
    if v.needs_threshold and fn.threshold is None:
        raise ValueError(f"variant {v.name!r} (Eq. 15) needs a saturation threshold; "
                         f"{fn.name!r} has none")
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"noise has shape {list(noise.shape)}, expected {list(x.shape)}")
    if clip_output and fn.bounds is None:
        raise ValueError(f"clip_output needs the range of h; {fn.name!r} has none "
                         "(give Saturating(..., bounds=(lo, hi)))")
    check_fits(x.dtype, alpha=alpha, c=c)
    p_b = _p_for(v, p, x, dim)

    if training and fn.affine is not None and fused.enabled_for(x, c):
        return fused.noisy_unit(
            x, p if v.learned_p else None, variant=v, dim=dim,
            affine=fn.affine, alpha=alpha, c=c, generator=generator, noise=noise,
            recompute_noise=recompute_noise, clip_output=clip_output,
        )

    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    if p_b is not None:
        p_b = p_b.to(cdt)
    if v.output_noise:
        assert p_b is not None
        h_x, u_x = fn.h(xf), fn.u(xf)
        if not training:
            out = output_noise_expectation(xf, h_x, u_x, p_b, alpha, c, v.half_normal)
        else:
            xi = draw_noise(x, generator) if noise is None else noise
            eps = xi.to(cdt)
            if v.half_normal:
                eps = eps.abs()
            sigma = noise_scale(saturation(h_x, u_x), p_b, c)
            out = blend(h_x, u_x, alpha) + noise_direction(xf, alpha) * sigma * eps
        if clip_output:
            assert fn.bounds is not None
            out = torch.clamp(out, fn.bounds[0], fn.bounds[1])
        return out.to(x.dtype)

    # Input-noise variants (Eqs. 14, 15): ξ → 0 at test time.
    if not training:
        return fn.h(xf).to(x.dtype)
    xi = (draw_noise(x, generator) if noise is None else noise).to(cdt)
    if v.sigma == "fixed":  # NANI
        shift = c * xi
    elif v.sigma == "eq9":  # NANIL
        assert p_b is not None
        shift = noise_scale(saturation(fn.h(xf), fn.u(xf)), p_b, c) * xi
    elif v.sigma == "authors":  # NANIL-authors
        assert p_b is not None
        shift = authors_noise_scale(saturation(fn.h(xf), fn.u(xf)), p_b, c, xi) * xi
    else:  # "saturated": NANIS
        assert fn.threshold is not None
        saturated = (xf.abs() >= fn.threshold).to(cdt)
        shift = saturated * (c * xi)
    return fn.h(xf + shift).to(x.dtype)


def _bind(fn: Saturating, name: str, doc: str):
    """The functional form of :func:`noisy_activation` for one (h, u) pair."""

    def bound(
        x: Tensor,
        p: Tensor | None = None,
        *,
        variant: str = "NAH",
        alpha: float | None = None,
        c: float | Tensor | None = None,
        training: bool,
        generator: torch.Generator | None = None,
        dim: int = 1,
        noise: Tensor | None = None,
        clip_output: bool = False,
    ) -> Tensor:
        return noisy_activation(x, p, fn=fn, variant=variant, alpha=alpha, c=c,
                                training=training, generator=generator, dim=dim, noise=noise,
                                clip_output=clip_output)

    bound.__name__ = bound.__qualname__ = name
    bound.__doc__ = doc + "\n\n    Arguments as :func:`noisy_activation` (``fn`` fixed).\n"
    return bound


noisy_hard_tanh = _bind(HARD_TANH, "noisy_hard_tanh", """Noisy hard-tanh, h(x) = clip(x, −1, 1), u(x) = x.

    Example::

        >>> x = torch.linspace(-3, 3, 7)
        >>> noisy_hard_tanh(x, torch.tensor([0.5]), variant="NAN", alpha=1.0, training=False)
        tensor([-1., -1., -1.,  0.,  1.,  1.,  1.])""")
noisy_hard_sigmoid = _bind(HARD_SIGMOID, "noisy_hard_sigmoid", """Noisy hard-sigmoid,
    h(x) = clip(0.25x + 0.5, 0, 1), u(x) = 0.25x + 0.5 (not ``F.hardsigmoid``).""")
noisy_tanh = _bind(TANH, "noisy_tanh", """Noisy soft tanh, h = tanh, u(x) = x (§4 applied to a soft
    unit).""")
noisy_sigmoid = _bind(SIGMOID, "noisy_sigmoid", """Noisy soft sigmoid, h = sigmoid,
    u(x) = 0.25x + 0.5.""")
