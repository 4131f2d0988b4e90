"""The fused GRU layer: per-step kernels and the autograd Function over a sequence (private).

Entry point: :func:`fused_gru_layer`, called by :class:`noisyact.rnn.NoisyGRU`; it computes
:func:`noisyact.rnn.reference.gru_step` over the sequence, or returns None where the fused path
does not apply. Structure as :mod:`._fused_lstm`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..compiler import loop_kernel
from ..fused import (
    UnitGrad,
    UnitKind,
    UnitTensors,
    first_order_backward,
    unit_backward,
    unit_forward,
)
from ._fused_common import (
    LayerNoise,
    accumulate,
    blocks,
    contiguous,
    kernel_units,
    layer_noise,
    needs_grad,
    pack,
    per_step,
    recurrent_transposed,
    recurrent_weight_grad,
    sequence_noise,
    unit_specs,
    unpack,
)
from .reference import RecurrentUnits

#: Width of each unit in units of H (the layout of ξ, p and the p-gradient accumulator).
SIZES = (2, 1)


class GRUUnits(NamedTuple):
    """Per-unit values of one layer: the gates (r, z side by side) and the candidate."""

    gate: UnitTensors | UnitKind
    cand: UnitTensors | UnitKind


class Recurrent(NamedTuple):
    """The recurrent weights of a step: Uᵀ (H, 3H), contiguous (see
    :func:`~._fused_common.recurrent_transposed`), and b_h (3H,)."""

    w_t: Tensor
    b: Tensor


class GRUCoeffs(NamedTuple):
    """The backward coefficients of a step, (B, H) each: every gradient of the step is dh
    times one of them."""

    a_r: Tensor  # ∂h'/∂(r input) = (1 − z) ∂n · (U_n h + b_hn) ∂r
    a_z: Tensor  # ∂h'/∂(z input) = (h − n) ∂z
    a_n: Tensor  # ∂h'/∂(n input) = (1 − z) ∂n
    a_nr: Tensor  # ∂h'/∂(U_n h + b_hn) = (1 − z) ∂n r
    p_r: Tensor  # ∂h'/∂p of r, z, n
    p_z: Tensor
    p_n: Tensor
    z: Tensor  # ∂h'/∂h (direct)


def _value(x: Tensor, xi: Tensor, unit: UnitTensors, kind: UnitKind) -> UnitGrad:
    """:func:`unit_forward` shaped like :func:`unit_backward` (no derivatives)."""
    return UnitGrad(unit_forward(x, xi, unit, kind), None, None)  # type: ignore[arg-type]


def _fwd_step(gi: Tensor, h: Tensor, rec: Recurrent, xi: Tensor, m: Tensor | None,
              units: GRUUnits, kinds: GRUUnits, save: bool) -> tuple[Tensor, ...]:
    """(h[, output][, coefficients]) of one step (mask as in the LSTM's step)."""
    hw = h @ rec.w_t
    H = h.shape[-1]

    def gh(j: int) -> Tensor:  # U h + b_h of one gate (not one addmm: see the LSTM's step)
        return rec.b[j * H:(j + 1) * H] + hw[:, j * H:(j + 1) * H]

    unit = unit_backward if save else _value
    gate, cand = units
    p_r, p_z = gate.p.split(H)
    x_r, x_z, x_n = blocks(xi, (1, 1, 1), H)
    r, dr_x, dr_p = unit(gi[:, :H] + gh(0), x_r, gate._replace(p=p_r), kinds.gate)
    z, dz_x, dz_p = unit(gi[:, H:2 * H] + gh(1), x_z, gate._replace(p=p_z), kinds.gate)
    hn = gh(2).to(r.dtype)
    n, dn_x, dn_p = unit(gi[:, 2 * H:] + r * hn, x_n, cand, kinds.cand)
    hp = h.to(z.dtype)
    h_new = ((1.0 - z) * n + z * hp).to(gi.dtype)
    out = (h_new,) if m is None else (torch.where(m, h_new, h), h_new * m)
    if not save:
        return out
    a_n, e_r = (1.0 - z) * dn_x, hp - n
    s = GRUCoeffs(a_r=a_n * hn * dr_x, a_z=e_r * dz_x, a_n=a_n, a_nr=a_n * r,
                  p_r=a_n * hn * dr_p, p_z=e_r * dz_p, p_n=(1.0 - z) * dn_p, z=z)
    return (*out, pack(s))


def _bwd_step(dh: Tensor, dh_out: Tensor, s: Tensor, w: Tensor, acc: Tensor,
              m: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward of one step from its coefficients ``s``: (∂/∂gi, ∂/∂gh, ∂/∂h_prev,
    acc + grad·∂φ/∂p per element in the layout of ξ)."""
    dh_in = dh + dh_out
    if m is not None:
        dh_in = torch.where(m, dh_in, 0.0)
    k = unpack(GRUCoeffs, s)
    dhf = dh_in.to(s.dtype)
    da_r, da_z = dhf * k.a_r, dhf * k.a_z
    dgi = torch.cat([da_r, da_z, dhf * k.a_n], dim=1).to(dh.dtype)
    dgh = torch.cat([da_r, da_z, dhf * k.a_nr], dim=1).to(dh.dtype)
    acc = accumulate(acc, [dhf * k.p_r, dhf * k.p_z, dhf * k.p_n])
    dh_prev = (dhf * k.z).to(dh.dtype) + dgh @ w
    if m is not None:
        dh_prev = dh_prev + torch.where(m, 0.0, dh)
    return dgi, dgh, dh_prev, acc


class _Plan(NamedTuple):
    """Everything of a layer call that is not differentiated."""

    units: GRUUnits  # of UnitTensors
    kinds: GRUUnits  # of UnitKind
    noise: LayerNoise
    mask: Tensor | None
    save: bool


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, plan, *ps):  # type: ignore[override]
        T, B, G = gi.shape
        gi = gi.contiguous()
        w = w_hh.to(gi.dtype).contiguous()
        rec = Recurrent(recurrent_transposed(w), b_hh.to(gi.dtype).contiguous())
        h = h0.to(gi.dtype).contiguous()
        mask = plan.mask
        xi = sequence_noise(plan.noise, (T, B, G), gi)
        step = loop_kernel(_fwd_step, (plan.kinds, plan.save))
        coeffs, hs, h_prev = [], [], []
        for g_t, xi_t, m_t in zip(gi.unbind(0), per_step(xi, T), per_step(mask, T), strict=True):
            h_prev.append(h)
            h, *rest = step(g_t, h, rec, xi_t, m_t, plan.units)
            hs.append(rest[0] if mask is not None else h)
            if plan.save:
                coeffs.append(rest[-1])
        out = torch.stack(hs)
        ctx.save_for_backward(out, w_hh, w, b_hh, mask, *ps)
        ctx.coeffs, ctx.h_prev = coeffs, h_prev
        return out, h

    @staticmethod
    @first_order_backward
    def backward(ctx, d_hs, d_h):  # type: ignore[override]
        out, w_hh, w, b_hh, mask, *ps = ctx.saved_tensors
        coeffs = ctx.coeffs
        T, B, H = out.shape
        d_hs, dh = contiguous(d_hs, d_h)
        acc = torch.zeros(B, sum(SIZES) * H, dtype=coeffs[0].dtype, device=out.device)
        step = loop_kernel(_bwd_step, inline=True)
        d_gi, d_gh = [out[0]] * T, [out[0]] * T
        d_outs, masks = d_hs.unbind(0), per_step(mask, T)
        for t in range(T - 1, -1, -1):
            d_gi[t], d_gh[t], dh, acc = step(dh, d_outs[t], coeffs[t], w, acc, masks[t])
        d_gh_all = torch.stack(d_gh)
        d_w = recurrent_weight_grad(d_gh_all, ctx.h_prev, out, mask)
        d_b = d_gh_all.reshape(-1, 3 * H).sum(0)
        dps = blocks(acc.sum(0), SIZES, H)
        return (torch.stack(d_gi), dh, d_w.to(w_hh.dtype), d_b.to(b_hh.dtype), None,
                *(d.to(p.dtype) for d, p in zip(dps, ps, strict=True)))


def fused_gru_layer(acts: RecurrentUnits, gi: Tensor, h0: Tensor, rec: tuple[Tensor, Tensor],
                    mask: Tensor | None, *, training: bool,
                    generator: torch.Generator | None) -> tuple[Tensor, Tensor] | None:
    """(output, h_n) of one layer and direction from ``gi`` (T, B, 3H) = W x + b_i and
    ``rec`` = (U, b_h), or None where the fused path does not apply (then the caller runs
    :func:`~noisyact.rnn.reference.gru_step`)."""
    w_hh, b_hh = rec
    H = w_hh.shape[1]
    specs = unit_specs([(acts.gate, 2 * H), (acts.cand, H)], gi)
    if specs is None:
        return None
    T, B = gi.shape[0], gi.shape[1]
    noise = layer_noise(specs, [n * H for n in SIZES], (T, B), gi, training, generator)
    units, kinds = kernel_units(GRUUnits, specs)
    ps = [s.tensors.p for s in specs]
    plan = _Plan(units, kinds, noise, mask, needs_grad(gi, h0, w_hh, b_hh, *ps))
    return _GRULayer.apply(gi, h0, w_hh, b_hh, plan, *ps)
