r"""Counter-based normal noise: ξ drawn inside the fused kernels instead of by :func:`torch.randn`.

On a CPU :func:`torch.randn` is one sequential Mersenne-Twister stream; for a large input it costs
more than the whole noisy activation around it, and its result must be written to memory, read
back and saved for backward. Here every element computes its own ξ from its index (the counter)
and a per-call key, so the noise is generated in parallel, vectorised, inside the kernel that uses
it, and regenerated in the backward kernel instead of being saved.

Generator. The key is two int32 words drawn with :func:`torch.randint` from the caller's
``torch.Generator`` (or the default one), so ``torch.manual_seed`` and explicit generators make
the noise reproducible exactly as they do for :func:`torch.randn`. Element ``j`` of a call takes
the pair index ``q = j − (j mod 2)`` and two 32-bit words

.. math::
    w_e = \mathrm{mix}(\mathrm{mix}((q + e) \oplus k_0) + k_1), \quad e \in \{0, 1\},

where ``mix`` is the *lowbias32* integer hash (two xor-shift-multiply rounds, a bijection on 32
bits). Their top 24 bits give ``u_1 ∈ (0, 1)``, ``u_2 ∈ [0, 1)`` and the Box-Muller transform
gives the pair ``(r cos θ, r sin θ)``, ``r = sqrt(−2 ln u_1)``, ``θ = 2π u_2``: element ``j`` takes
the cosine if ``j`` is even, the sine if odd, so each pair holds two independent N(0, 1) samples.
As with float32 :func:`torch.randn`, 24-bit uniforms bound ``|ξ|`` by ``sqrt(50 ln 2) ≈ 5.89``.

This is a different stream from :func:`torch.randn`: for the same seed the numbers differ from
the reference path's. ``set_noise_source("torch")`` makes the fused path draw with
:func:`torch.randn` (identical numbers to the reference path, slower, ξ saved for backward).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._validation import env_choice

__all__ = ["NOISE_SOURCES", "counter_normal", "draw_keys", "noise_block", "noise_source",
           "normal_like", "set_noise_source", "uses_counter_noise"]

NOISE_SOURCES = ("kernel", "torch")
# None: not chosen yet; the first use reads NOISYACT_NOISE (default "kernel"). Read lazily so
# that a bad value fails the run that uses the noise, not ``import noisyact``.
_state: dict[str, str | None] = {"source": None}

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def set_noise_source(source: str) -> None:
    """Where the fused path draws ξ: ``"kernel"`` (default, :func:`counter_normal` inside the
    kernels, regenerated in backward) or ``"torch"`` (:func:`torch.randn`, the reference path's
    numbers). Also settable with the environment variable ``NOISYACT_NOISE``."""
    if source not in NOISE_SOURCES:
        raise ValueError(f"source must be one of {NOISE_SOURCES}, got {source!r}")
    _state["source"] = source


def noise_source() -> str:
    """The current noise source (see :func:`set_noise_source`); until one is set, that of the
    environment variable ``NOISYACT_NOISE`` (default ``"kernel"``), checked here: ``ValueError``
    if it names no source."""
    if _state["source"] is None:
        _state["source"] = env_choice("NOISYACT_NOISE", NOISE_SOURCES, "kernel")
    return str(_state["source"])


def uses_counter_noise(numel: int) -> bool:
    """Whether a call over ``numel`` elements per key draws counter noise: the source is
    ``"kernel"`` and the int32 counters cover it (else :func:`torch.randn` is used)."""
    return noise_source() == "kernel" and numel <= _INT32_MAX


def draw_keys(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` keys, an int32 tensor of shape (n, 2) drawn from ``generator`` (default: global)."""
    return torch.randint(_INT32_MIN, _INT32_MAX, (n, 2), dtype=torch.int32, device=device,
                         generator=generator)


def _mix(x: Tensor) -> Tensor:
    """lowbias32 on int32 (right shifts masked to act as logical shifts; products wrap)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * -0x7B935975  # 0x846CA68B as a signed int32
    return x ^ ((x >> 16) & 0xFFFF)


def _word(counter: Tensor, key: Tensor) -> Tensor:
    """24 random bits per counter, as float32 in [0, 2^24)."""
    w = _mix(_mix(counter ^ key[0]) + key[1])
    return ((w >> 8) & 0xFFFFFF).to(torch.float32)


def _uniforms(pair: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
    """Box-Muller's (u_1, u_2) of the pairs starting at the even counters ``pair``."""
    u1 = (_word(pair, key) + 0.5) * (1.0 / 16777216.0)
    return u1, _word(pair + 1, key) * (1.0 / 16777216.0)


def counter_normal(counter: Tensor, key: Tensor) -> Tensor:
    """N(0, 1) float32 samples, one per int32 ``counter`` (distinct counters within a key give
    independent samples), for an int32 ``key`` of shape (2,). A pure tensor function: it runs
    eagerly or fused into a compiled kernel with the same numbers (up to rounding of ln and cos).
    """
    odd = counter & 1
    u1, u2 = _uniforms(counter - odd, key)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    return radius * torch.cos(2.0 * math.pi * u2 - odd.to(torch.float32) * (0.5 * math.pi))


def normal_like(shape: tuple[int, ...] | torch.Size, key: Tensor) -> Tensor:
    """:func:`counter_normal` for the row-major counters ``0 .. numel − 1`` of ``shape``: the
    ξ the fused kernels use for a contiguous tensor of that shape and this key."""
    n = math.prod(shape)
    if n > _INT32_MAX:
        raise ValueError(f"counter noise covers at most 2**31 - 1 elements per key, got {n}")
    # built from one arange per dimension (not a view of a flat arange) so that a compiled kernel
    # iterates the noise in the same loop nest as the tensors it is combined with
    counter = torch.zeros((), dtype=torch.int32, device=key.device)
    stride = 1
    for d in range(len(shape) - 1, -1, -1):
        idx = torch.arange(shape[d], dtype=torch.int32, device=key.device) * stride
        counter = counter + idx.view([-1] + [1] * (len(shape) - 1 - d))
        stride *= shape[d]
    return counter_normal(counter, key)


def noise_block(like: Tensor, key: Tensor) -> Tensor:
    """The values of :func:`normal_like` ``(like.shape, key)`` (equal up to rounding of sin and
    cos), as float32 of ``like``'s shape, computed pair by pair: each pair's hash, logarithm and
    square root once, then its cosine and sine. For noise stored in memory (the recurrent layers
    draw a whole sequence in one call) this is 1.6 times faster than :func:`normal_like`, whose
    per-element form suits noise generated inside the kernel that uses it. ``like`` gives only
    the shape (a traced kernel sees it as symbolic sizes)."""
    n = like.numel()
    if n > _INT32_MAX - 1:
        raise ValueError(f"counter noise covers at most 2**31 - 2 elements per key, got {n}")
    u1, u2 = _uniforms(torch.arange(0, n, 2, dtype=torch.int32, device=key.device), key)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    theta = 2.0 * math.pi * u2
    pairs = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=-1)
    return pairs.view(-1)[:n].view(like.shape)
