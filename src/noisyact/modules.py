"""``nn.Module`` forms of the noisy activations: parameters and train/eval state only.

The math lives in :mod:`noisyact.functional`; a module holds the learned p, the noise scale c
(a buffer, so annealing schedules and checkpoints see it) and switches on ``self.training``.
"""

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from . import functional as F
from ._validation import check_c, check_hyperparameters
from .fused import compute_dtype
from .saturating import HARD_SIGMOID, HARD_TANH, SIGMOID, TANH, TORCH_HARDSIGMOID, Saturating
from .variants import get_variant

__all__ = [
    "HardSigmoid",
    "LazyNoisyHardSigmoid",
    "LazyNoisyHardTanh",
    "LazyNoisySigmoid",
    "LazyNoisyTanh",
    "LazyNoisyTorchHardsigmoid",
    "NoisyActivation",
    "NoisyHardSigmoid",
    "NoisyHardTanh",
    "NoisyHardswish",
    "NoisySigmoid",
    "NoisyTanh",
    "NoisyTorchHardsigmoid",
]


class NoisyActivation(nn.Module):
    r"""Noisy version of any saturating function h with linearisation u (Gulcehre et al., 2016).

    Training mode draws fresh per-element noise; eval mode returns the test-time value and contains
    no random op. For the output-noise variants (NAN, NAH):

    .. math::
        \phi(x, \xi) = \alpha h(x) + (1 - \alpha) u(x) + d(x)\,\sigma(x)\,\epsilon,\qquad
        \sigma(x) = c\,(\mathrm{sigmoid}(p\,(h(x) - u(x))) - 0.5)^2

    (Eqs. 8, 9, 12), with :math:`\epsilon = \xi` (NAN) or :math:`|\xi|` (NAH) and
    :math:`d(x) = -\mathrm{sgn}(x)\,\mathrm{sgn}(1 - \alpha)`; eval gives the expectation Eq. 13.
    The input-noise variants compute :math:`h(x + \sigma\xi)` (NANI: σ = c; NANIL: σ(x) of
    Eq. 9; NANIS: σ = c only where :math:`|x| \ge x_t`, Eq. 15; NANIL-authors: σ =
    c·softplus(p|∆| / (|ξ| + 1e-10)) of the authors' code) and :math:`h(x)` in eval.

    .. note::
        NANIL with σ(x) of Eq. 9 (the paper's definition) injects almost no noise: σ ≤ c/4, and
        ≈ c (p∆/4)² near the threshold, never enough to move a saturated input back (0 of
        >50k saturated elements change at c = 0.5), and p gets no gradient inside the recurrent
        layers. ``"NANIL-authors"`` is the authors' σ, which depends on ξ and injects noise in
        the linear regime too (see :mod:`noisyact.variants`).

    .. warning::
        With α > 1 (the defaults of the hard functions: 1.15 hard-tanh, 1.1 hard-sigmoid) NAN
        and NAH are **unbounded** by design: past saturation the (1 − α)·u(x) term keeps
        growing linearly, so the output leaves the range of h (in eval a noisy hard-sigmoid
        gives −1.35 at x = 100, a noisy hard-tanh −13.75). This is the paper's Eq. 12.
        In a recurrent layer fed large inputs the cell state can then grow to inf/NaN where
        ``nn.LSTM`` or ``variant="hard"`` stay bounded. ``clip_output=True`` clips the output
        to the range of h, as the authors' paper-era code did; α = 1 also keeps it bounded.

    Args:
        fn: the pair (h, u) as a :class:`~noisyact.saturating.Saturating`.
        variant: ``"NAN"``, ``"NAH"``, ``"NANI"``, ``"NANIL"``, ``"NANIS"`` or
            ``"NANIL-authors"`` (:mod:`noisyact.variants`). Default ``"NAH"``.
        alpha: α of Eq. 12. Default: the authors' code defaults (1.15 hard-tanh, 1.1
            hard-sigmoid), else 1.
        c: noise scale (c of Eq. 9, or σ of NANI/NANIS). Default 0.5 (0.05 NANI, 0.25 NANIS
            and NANIL-authors).
        num_parameters: number of learned p: 1, or the number of features along ``dim``.
        dim: feature axis for a per-feature p. Default 1 (as ``nn.PReLU``).
        inplace: accepted for drop-in use in registries (timm); ignored.
        generator: optional :class:`torch.Generator` for the noise (eager mode).
        recompute_noise: save only x for backward and redraw ξ (fused path, noise source
            ``"torch"``; the default counter noise is always regenerated).
        device: the device of p.
        dtype: the dtype of p (``c`` is always a float64 buffer).
        clip_output: clip the output to the range of h ([−1, 1] for tanh, [0, 1] for
            sigmoid) in training and eval, with zero gradient where the clip is active (the
            authors' paper-era code). Default ``False``: Eq. 12, unbounded for α > 1. No effect
            on the input-noise variants, whose output is h(·).

    Shape:
        - Input: :math:`(*)`, any shape (with ``x.shape[dim] == num_parameters`` if > 1).
        - Output: :math:`(*)`, same shape as the input.

    Attributes:
        p: the learned parameter of Eq. 9, shape ``(num_parameters,)``, initialised U(−1, 1)
            as in the paper; ``None`` for NANI and NANIS (``Variant.learned_p``). Like
            ``nn.PReLU``'s weight, do not apply weight decay to it (see :func:`noisyact.param_groups`).
        c: the noise scale, a 0-dim float64 buffer (saved in the state dict; change it with
            :meth:`set_c` or an annealing schedule).
    """

    fn: Saturating
    _output_noise: bool  # properties of the variant (noisyact.variants), for TorchScript
    _half_normal: bool
    __jit_ignored_attributes__: ClassVar[list[str]] = ["fn", "generator"]

    def __init__(
        self,
        fn: Saturating | None = None,
        variant: str = "NAH",
        alpha: float | None = None,
        c: float | None = None,
        num_parameters: int = 1,
        dim: int = 1,
        inplace: bool = False,
        generator: torch.Generator | None = None,
        recompute_noise: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        clip_output: bool = False,
    ) -> None:
        super().__init__()
        if fn is not None:
            self.fn = fn
        if not isinstance(getattr(self, "fn", None), Saturating):
            raise ValueError("fn must be a noisyact.saturating.Saturating (h, u) pair")
        v = get_variant(variant)
        self.variant = v.name
        self._output_noise, self._half_normal = v.output_noise, v.half_normal
        alpha = F.default_alpha(self.fn) if alpha is None else alpha
        c = v.default_c if c is None else c
        check_hyperparameters(alpha=alpha, c=c)  # a number, not "1.15"
        self.alpha = float(alpha)
        if not isinstance(num_parameters, int) or num_parameters < 1:
            raise ValueError(f"num_parameters must be a positive int, got {num_parameters!r}")
        if v.needs_threshold and self.fn.threshold is None:
            raise ValueError(f"variant {v.name!r} needs a saturation threshold; "
                             f"{self.fn.name!r} has none")
        if not isinstance(clip_output, bool):
            raise ValueError(f"clip_output must be a bool, got {clip_output!r}")
        if clip_output and self.fn.bounds is None:
            raise ValueError(f"clip_output needs the range of h; {self.fn.name!r} has none "
                             "(give make_saturating(..., bounds=(lo, hi)))")
        self.clip_output = clip_output
        self.num_parameters = num_parameters
        self.dim = int(dim)
        self.inplace = inplace
        self.generator = generator
        self.recompute_noise = recompute_noise
        self.register_buffer("c", torch.tensor(float(c), dtype=torch.float64, device=device))
        self._c_built = float(c)  # (not saved) a c loaded or annealed since differs from it
        if v.learned_p:
            self.p: nn.Parameter | None = nn.Parameter(
                torch.empty(num_parameters, device=device, dtype=dtype)
            )
        else:
            self.register_parameter("p", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """p ~ U(−1, 1), as in all of the paper's experiments (§6)."""
        if self.p is not None:
            with torch.no_grad():
                self.p.uniform_(-1.0, 1.0)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # c is a hyperparameter: it follows the module across devices but keeps float64, so
        # that .half() or .to(bfloat16) do not round it (the kernels cast it where used).
        c = self.c
        super()._apply(fn, recurse)
        if self.c.dtype != torch.float64:
            self.c = c.to(device=self.c.device, dtype=torch.float64)
        return self

    def set_c(self, value: float) -> None:
        """Set the noise scale c (validated: finite, >= 0)."""
        with torch.no_grad():
            self.c.fill_(check_c(value))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            if torch.jit.is_scripting():
                raise RuntimeError("noisyact: a TorchScript noisy module runs in eval mode only "
                                   "(the noise is drawn outside TorchScript): call .eval() on "
                                   "the module before torch.jit.script, or use torch.compile")
            return self._noisy(x)
        return self._expectation(x)

    @torch.jit.unused
    def _noisy(self, x: Tensor) -> Tensor:
        return F.noisy_activation(
            x, self.p, fn=self.fn, variant=self.variant, alpha=self.alpha, c=self.c,
            training=True, generator=self.generator, dim=self.dim,
            recompute_noise=self.recompute_noise, clip_output=self.clip_output,
        )

    def _expectation(self, x: Tensor) -> Tensor:
        return F.noisy_activation(
            x, self.p, fn=self.fn, variant=self.variant, alpha=self.alpha, c=self.c,
            training=False, dim=self.dim, clip_output=self.clip_output,
        )

    def extra_repr(self) -> str:
        s = f"variant={self.variant}"
        if self._output_noise:
            s += f", alpha={self.alpha:g}"
        s += f", c={float(self.c):.4g}"
        if self.p is not None:
            s += f", num_parameters={self.num_parameters}"
            if self.num_parameters > 1:
                s += f", dim={self.dim}"
        if self.clip_output:
            s += ", clip_output=True"
        return s


def _dtype_name(x: Tensor) -> str:
    if torch.jit.is_scripting():
        return "an integer or bool tensor"
    return str(x.dtype)


class _AffineHard(NoisyActivation):
    """Hard functions h = a + b·clamp(kx, −1, 1): an eval path that TorchScript can compile."""

    _a: float
    _b: float
    _k: float
    clip_output: bool

    def __init__(self, variant: str = "NAH", alpha: float | None = None, c: float | None = None,
                 num_parameters: int = 1, dim: int = 1, inplace: bool = False,
                 generator: torch.Generator | None = None, recompute_noise: bool = False,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, clip_output: bool = False) -> None:
        super().__init__(None, variant, alpha, c, num_parameters, dim, inplace, generator,
                         recompute_noise, device, dtype, clip_output)
        assert self.fn.affine is not None
        self._a, self._b, self._k = self.fn.affine

    def _expectation(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():  # as the training path and the functional form
            raise ValueError("x must be a floating-point Tensor, got " + _dtype_name(x))
        cdt = compute_dtype(x.dtype)
        xf = x.to(cdt)
        kx = self._k * xf
        h_x = self._a + self._b * torch.clamp(kx, -1.0, 1.0)
        if not self._output_noise:
            return h_x.to(x.dtype)
        p = self.p
        if p is None:
            raise RuntimeError("p is missing")
        u_x = self._a + self._b * kx
        p_b = F.broadcast_p(p, x, self.dim).to(cdt)
        out = F.output_noise_expectation(xf, h_x, u_x, p_b, self.alpha, self.c.to(cdt),
                                         self._half_normal)
        if self.clip_output:
            out = torch.clamp(out, self._a - self._b, self._a + self._b)
        return out.to(x.dtype)


class NoisyHardTanh(_AffineHard):
    r"""Noisy hard-tanh: h(x) = clip(x, −1, 1) (Eq. 4), u(x) = x (Eq. 2), threshold |x_t| = 1.

    .. math::
        \phi(x, \xi) = \alpha\,\mathrm{clip}(x, -1, 1) + (1 - \alpha)\,x
            + d(x)\,c\,(\mathrm{sigmoid}(p\,(\mathrm{clip}(x, -1, 1) - x)) - 0.5)^2\,\epsilon

    for NAN/NAH; see :class:`NoisyActivation` for every variant, the arguments and shapes.

    Examples::

        >>> m = NoisyHardTanh(variant="NAH", alpha=1.15, c=0.5)
        >>> y = m(torch.randn(8, 16))          # training: noisy where |x| > 1
        >>> y_test = m.eval()(torch.randn(8, 16))  # deterministic expectation
    """

    fn = HARD_TANH


class NoisyHardSigmoid(_AffineHard):
    r"""Noisy hard-sigmoid: h(x) = clip(0.25x + 0.5, 0, 1) (Eq. 3), u(x) = 0.25x + 0.5 (Eq. 1).

    Saturates at |x| >= 2. This is the paper's hard-sigmoid, **not**
    :func:`torch.nn.functional.hardsigmoid` (x/6 + 1/2, saturating at |x| >= 3).
    See :class:`NoisyActivation` for every variant, the arguments and shapes.

    Examples::

        >>> gate = NoisyHardSigmoid(variant="NAH", num_parameters=32, dim=-1)
        >>> g = gate(torch.randn(4, 32))
    """

    fn = HARD_SIGMOID


class NoisyTanh(NoisyActivation):
    """Noisy soft tanh: h = tanh, u(x) = x. Noise grows smoothly with |tanh(x) − x|."""

    fn = TANH

    def __init__(self, variant: str = "NAH", **kwargs: object) -> None:
        super().__init__(None, variant, **kwargs)  # type: ignore[arg-type]


class NoisySigmoid(NoisyActivation):
    """Noisy soft sigmoid: h = sigmoid, u(x) = 0.25x + 0.5."""

    fn = SIGMOID

    def __init__(self, variant: str = "NAH", **kwargs: object) -> None:
        super().__init__(None, variant, **kwargs)  # type: ignore[arg-type]


class NoisyTorchHardsigmoid(NoisyActivation):
    """Noisy version of torch's hard-sigmoid (``nn.Hardsigmoid``): h(x) = clip(x/6 + 1/2, 0, 1),
    u(x) = x/6 + 1/2, threshold |x_t| = 3 (:data:`~noisyact.saturating.TORCH_HARDSIGMOID`).

    Not the paper's hard-sigmoid (slope 1/4, :class:`NoisyHardSigmoid`): this keeps the function
    of a model built with ``nn.Hardsigmoid`` (MobileNetV3's squeeze-excitation gates). α
    defaults to 1. Arguments as :class:`NoisyActivation` without ``fn``.
    """

    fn = TORCH_HARDSIGMOID

    def __init__(self, variant: str = "NAH", **kwargs: object) -> None:
        super().__init__(None, variant, **kwargs)  # type: ignore[arg-type]


class NoisyHardswish(nn.Module):
    """``nn.Hardswish`` with a noisy gate: x · φ(x), φ a :class:`NoisyTorchHardsigmoid`
    (``gate``), since hardswish(x) = x · hardsigmoid(x). Arguments as
    :class:`NoisyTorchHardsigmoid`.

    Shape: any; output of the shape of the input.

    Example::

        >>> act = NoisyHardswish("NAN", alpha=1.0).eval()  # eval: hardswish, up to rounding
        >>> x = torch.randn(4)
        >>> bool(torch.allclose(act(x), nn.functional.hardswish(x)))
        True
    """

    def __init__(self, variant: str = "NAH", *, gate: NoisyActivation | None = None,
                 **kwargs: object) -> None:
        super().__init__()
        self.gate = gate if gate is not None else NoisyTorchHardsigmoid(variant, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class _LazyNoisy(LazyModuleMixin):
    """One p per feature along ``dim``, sized from the first input (as ``nn.LazyLinear``)."""

    cls_to_become: type[NoisyActivation]

    def __init__(self, variant: str = "NAH", **kwargs: object) -> None:
        if "num_parameters" in kwargs:
            raise ValueError("a lazy noisy activation infers num_parameters from its first input")
        super().__init__(variant, **kwargs)  # type: ignore[call-arg]
        self.num_parameters = 0
        if self.p is not None:  # type: ignore[has-type]
            self.p = UninitializedParameter(device=kwargs.get("device"),  # type: ignore[arg-type]
                                             dtype=kwargs.get("dtype"))  # type: ignore[arg-type]

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params():
            super().reset_parameters()  # type: ignore[misc]

    def initialize_parameters(self, x: Tensor) -> None:
        """Materialise p with ``x.shape[dim]`` entries, U(−1, 1)."""
        if not self.has_uninitialized_params():
            return
        dim: int = self.dim  # type: ignore[attr-defined]
        if not -x.dim() <= dim < x.dim():
            raise ValueError(f"dim={dim} is out of range for the first input, of shape "
                             f"{list(x.shape)}")
        n = x.shape[dim]
        with torch.no_grad():
            self.p.materialize((n,))  # type: ignore[attr-defined]
        self.num_parameters = n
        self.reset_parameters()

    def extra_repr(self) -> str:
        if self.has_uninitialized_params():
            return f"variant={self.variant}, num_parameters=lazy, dim={self.dim}"  # type: ignore[attr-defined]
        return super().extra_repr()  # type: ignore[misc]


class LazyNoisyHardTanh(_LazyNoisy, NoisyHardTanh):
    """:class:`NoisyHardTanh` with one p per feature along ``dim``, sized on the first forward.

    Like ``nn.LazyLinear``: run one forward (e.g. a dummy batch) before building the
    optimizer; the module then becomes a :class:`NoisyHardTanh` with ``num_parameters =
    x.shape[dim]``. Arguments as :class:`NoisyHardTanh` except ``num_parameters``.
    """

    cls_to_become = NoisyHardTanh


class LazyNoisyHardSigmoid(_LazyNoisy, NoisyHardSigmoid):
    """:class:`NoisyHardSigmoid` with one p per feature, sized on the first forward
    (see :class:`LazyNoisyHardTanh`)."""

    cls_to_become = NoisyHardSigmoid


class LazyNoisyTanh(_LazyNoisy, NoisyTanh):
    """:class:`NoisyTanh` with one p per feature, sized on the first forward
    (see :class:`LazyNoisyHardTanh`)."""

    cls_to_become = NoisyTanh


class LazyNoisyTorchHardsigmoid(_LazyNoisy, NoisyTorchHardsigmoid):
    """:class:`NoisyTorchHardsigmoid` with one p per feature, sized on the first forward
    (see :class:`LazyNoisyHardTanh`)."""

    cls_to_become = NoisyTorchHardsigmoid


class LazyNoisySigmoid(_LazyNoisy, NoisySigmoid):
    """:class:`NoisySigmoid` with one p per feature, sized on the first forward
    (see :class:`LazyNoisyHardTanh`)."""

    cls_to_become = NoisySigmoid


def make_saturating(
    name: str, h: Callable[[Tensor], Tensor], u: Callable[[Tensor], Tensor],
    threshold: float | None = None, bounds: tuple[float, float] | None = None,
) -> Saturating:
    """Build the (h, u) pair for a user's saturating function, for :class:`NoisyActivation`.

    ``bounds`` = (lo, hi), the range of h, is needed by ``clip_output=True``."""
    return Saturating(name, h, u, threshold=threshold, bounds=bounds)


class HardSigmoid(nn.Module):
    """The paper's hard-sigmoid clip(0.25x + 0.5, 0, 1) (Eq. 3), without noise.

    Not ``nn.Hardsigmoid`` (x/6 + 1/2). Used for the "hard, no noise" rows (Table 4).
    """

    fn = HARD_SIGMOID  # what it computes (the fused recurrent layers read it)
    __jit_ignored_attributes__: ClassVar[list[str]] = ["fn"]

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(0.25 * x + 0.5, 0.0, 1.0)
