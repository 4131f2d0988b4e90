"""An independent NumPy transcription of the paper's equations (float64), written from PAPER.md.

It shares no code with the library, so that the library's tests compare two implementations.
"""

from __future__ import annotations

import math

import numpy as np

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

# (h, u, threshold) for each function, Eqs. 1-4.
FUNCTIONS = {
    "hard_tanh": (lambda x: np.clip(x, -1.0, 1.0), lambda x: x, 1.0),
    "hard_sigmoid": (lambda x: np.clip(0.25 * x + 0.5, 0.0, 1.0), lambda x: 0.25 * x + 0.5, 2.0),
    "tanh": (np.tanh, lambda x: x, None),
    "sigmoid": (lambda x: 1.0 / (1.0 + np.exp(-x)), lambda x: 0.25 * x + 0.5, None),
}


def sgn(x):
    """The paper's sign: 1 if x >= 0 else -1 (so sgn(0) = 1)."""
    return np.where(np.asarray(x) >= 0, 1.0, -1.0)


def sigma(x, p, c, fn):
    h, u, _ = FUNCTIONS[fn]
    delta = h(x) - u(x)  # Eq. 8
    g = 1.0 / (1.0 + np.exp(-p * delta))
    return c * (g - 0.5) ** 2  # Eq. 9


def softplus(r):
    """log(1 + e^r), without overflow."""
    return np.logaddexp(0.0, r)


def sigma_authors(x, xi, p, c, fn):
    """σ of NANIL in the authors' code (NTanhPInp / NSigmoidPInp of caglar/noisy_units, PAPER.md
    §11): c * softplus(p * |h(x) - u(x)| / (|ξ| + 1e-10)), a function of the sampled ξ."""
    h, u, _ = FUNCTIONS[fn]
    return c * softplus(p * np.abs(h(x) - u(x)) / (np.abs(xi) + 1e-10))


def phi(x, xi, p, *, fn, variant, alpha, c):
    """Training output for noise xi (Eq. 12, 14, 15)."""
    h, u, thr = FUNCTIONS[fn]
    x = np.asarray(x, dtype=np.float64)
    xi = np.asarray(xi, dtype=np.float64)
    if variant in ("NAN", "NAH"):
        d = -sgn(x) * sgn(1.0 - alpha)
        eps = np.abs(xi) if variant == "NAH" else xi
        return alpha * h(x) + (1 - alpha) * u(x) + d * sigma(x, p, c, fn) * eps
    if variant == "NANI":
        return h(x + c * xi)
    if variant == "NANIL":
        return h(x + sigma(x, p, c, fn) * xi)
    if variant == "NANIL-authors":
        return h(x + sigma_authors(x, xi, p, c, fn) * xi)
    if variant == "NANIS":
        return h(x + (np.abs(x) >= thr) * c * xi)
    raise ValueError(variant)


def expectation(x, p, *, fn, variant, alpha, c):
    """Test-time output (Eq. 13; h(x) for the input-noise variants)."""
    h, u, _ = FUNCTIONS[fn]
    x = np.asarray(x, dtype=np.float64)
    if variant == "NAN":
        return alpha * h(x) + (1 - alpha) * u(x)
    if variant == "NAH":
        d = -sgn(x) * sgn(1.0 - alpha)
        return alpha * h(x) + (1 - alpha) * u(x) + d * sigma(x, p, c, fn) * SQRT_2_OVER_PI
    return h(x)
