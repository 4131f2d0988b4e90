r"""The variants of noisy activation, defined once: what each one does, as named properties.

Every part of the library (the reference equations in :mod:`noisyact.functional`, the modules,
the fused kernels of :mod:`noisyact.fused` and the recurrent layers) reads a variant from
:data:`VARIANTS` and branches on its properties (``v.output_noise``, ``v.sigma == "eq9"``), never
on its name. A :class:`Variant` is a frozen (hashable) dataclass, so a compiled kernel can be
specialised to it (a static argument of :mod:`noisyact.compiler`).

=============  ======  ===========  =========  ==============================================
variant        noise   ε            p learned  σ
=============  ======  ===========  =========  ==============================================
NAN            output  ξ            yes        ``eq9``: c (g(p∆) − 0.5)²            (Eq. 12)
NAH            output  |ξ|          yes        ``eq9``                        (Algorithm 1)
NANI           input   ξ            no         ``fixed``: c                         (Eq. 14)
NANIL          input   ξ            yes        ``eq9``                              (Eq. 14)
NANIS          input   ξ            no         ``saturated``: c where |x| ≥ x_t     (Eq. 15)
NANIL-authors  input   ξ            yes        ``authors``: c softplus(p|∆| / (|ξ| + 1e-10))
=============  ======  ===========  =========  ==============================================

**NANIL as the paper defines it injects almost no noise.** With σ(x) of Eq. 9, σ ≤ c/4 far
from the threshold and σ ≈ c (p∆/4)² near it (|p| ≤ 1), which is never enough to move a
saturated input back into the linear regime: at c = 0.5, 0 of more than 50 000 saturated
elements change their output (``tests/test_nanil.py``), and inside ``NoisyLSTM``/``NoisyGRU``
p gets exactly zero gradient. The authors' code (``NTanhPInp``/``NSigmoidPInp`` of
caglar/noisy_units) uses another σ for this variant, offered here as ``"NANIL-authors"``:
σ = c·softplus(p·|∆| / (|ξ| + 1e-10)), which depends on the sampled ξ (for large p|∆|/|ξ|,
σξ ≈ c p |∆| sign(ξ)) and injects noise in the linear regime too (∆ = 0 gives σ = c ln 2).
It is a separate row of this table, not an option of NANIL, because it is a different σ with
its own training behaviour (noise everywhere), chosen by name wherever a variant is
(``variant=``, ``gate_variant=``, ``unit_variant=``) and reported as such in ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["VARIANTS", "Sigma", "Variant", "get_variant"]

Sigma = Literal["eq9", "fixed", "saturated", "authors"]


@dataclass(frozen=True)
class Variant:
    """One kind of noisy activation.

    Attributes:
        name: the canonical name (``"NAN"``, ...).
        noise_at: ``"output"`` (Eq. 12: φ = αh + (1 − α)u + dσε) or ``"input"``
            (Eq. 14: φ = h(x + σξ)).
        half_normal: ε = |ξ| (NAH) instead of ξ.
        sigma: the noise scale: ``"eq9"`` (σ(x) = c (sigmoid(p∆) − 0.5)², Eq. 9),
            ``"fixed"`` (σ = c, NANI), ``"saturated"`` (σ = c where |x| ≥ x_t, else 0, NANIS)
            or ``"authors"`` (σ = c·softplus(p|∆| / (|ξ| + 1e-10)), the authors' NANIL code).
        default_c: c used when none is given.
    """

    name: str
    noise_at: Literal["output", "input"]
    half_normal: bool
    sigma: Sigma
    default_c: float

    @property
    def output_noise(self) -> bool:
        """Noise added to the output (Eq. 12) rather than to the input (Eqs. 14, 15)."""
        return self.noise_at == "output"

    @property
    def learned_p(self) -> bool:
        """Whether σ uses the learned p (then modules hold one and annealing applies)."""
        return self.sigma in ("eq9", "authors")

    @property
    def needs_threshold(self) -> bool:
        """Whether σ needs the saturation threshold x_t of h (NANIS, Eq. 15)."""
        return self.sigma == "saturated"


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("NAN", "output", False, "eq9", 0.5),
        Variant("NAH", "output", True, "eq9", 0.5),
        Variant("NANI", "input", False, "fixed", 0.05),  # Table 3: σ = 0.05
        Variant("NANIL", "input", False, "eq9", 0.5),
        Variant("NANIS", "input", False, "saturated", 0.25),  # authors' code
        Variant("NANIL-authors", "input", False, "authors", 0.25),  # authors' NTanhPInp
    )
}
_BY_UPPER = {name.upper(): v for name, v in VARIANTS.items()}


def get_variant(name: object, argument: str = "variant") -> Variant:
    """The variant called ``name`` (case-insensitive), or a ``ValueError`` naming ``argument``."""
    if isinstance(name, Variant):
        return name
    if isinstance(name, str):
        v = _BY_UPPER.get(name.upper())
        if v is not None:
            return v
    raise ValueError(f"{argument} must be one of {', '.join(VARIANTS)}; got {name!r}")
