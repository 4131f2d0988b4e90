"""The fused LSTM layer: per-step kernels and the autograd Function over a sequence (private).

Entry point: :func:`fused_lstm_layer`, called by :class:`noisyact.rnn.NoisyLSTM`; it computes
:func:`noisyact.rnn.reference.lstm_step` over the sequence, or returns None where the fused path
does not apply. One compiled call per step holds the recurrent matrix product and one pass over
all units (:func:`noisyact.fused.unit_forward`/``unit_backward``) and the state update. With
``save`` the forward step also returns the step's backward coefficients (:class:`LSTMCoeffs`),
so that the backward step neither redraws ξ nor evaluates a unit again.
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
SIZES = (3, 1, 1)


class LSTMUnits(NamedTuple):
    """Per-unit values of one layer: the gates (i, f, o side by side), candidate, cell output."""

    gate: UnitTensors | UnitKind
    cand: UnitTensors | UnitKind
    cell: UnitTensors | UnitKind


class LSTMState(NamedTuple):
    h: Tensor
    c: Tensor


class LSTMCoeffs(NamedTuple):
    """The backward coefficients of a step, (B, H) each: every gradient of the step is one of
    them times d_c = dc + dh·o·∂cell (the cell-state gradient) or dh."""

    a_i: Tensor  # ∂c'/∂pre_i = g ∂i
    a_f: Tensor  # c ∂f
    a_g: Tensor  # i ∂g
    a_o: Tensor  # ∂h'/∂pre_o = cell(c') ∂o
    p_i: Tensor  # g ∂i/∂p
    p_f: Tensor  # c ∂f/∂p
    p_o: Tensor  # cell(c') ∂o/∂p
    p_g: Tensor  # i ∂g/∂p
    t_x: Tensor  # ∂h'/∂c' = o ∂cell
    t_p: Tensor  # o ∂cell/∂p
    f: Tensor  # ∂c'/∂c


def _value(x: Tensor, xi: Tensor, unit: UnitTensors, kind: UnitKind) -> UnitGrad:
    """:func:`unit_forward` shaped like :func:`unit_backward` (no derivatives)."""
    return UnitGrad(unit_forward(x, xi, unit, kind), None, None)  # type: ignore[arg-type]


def _fwd_step(xp: Tensor, state: LSTMState, w_t: Tensor, xi: Tensor, m: Tensor | None,
              units: LSTMUnits, kinds: LSTMUnits, save: bool) -> tuple[Tensor, ...]:
    """(h, c[, output][, coefficients]) of one step; with a mask ``m`` (B, 1) the states are
    kept where a sequence has ended and the output is zero there. ``w_t`` is W_hhᵀ (H, 4H),
    contiguous (see :func:`~._fused_common.recurrent_transposed`)."""
    h, c = state
    hw = h @ w_t
    H = c.shape[-1]

    def pre(j: int) -> Tensor:
        # added gate by gate inside the units' loop: written as xp + h @ w_t, the compiler
        # makes it an addmm, which first copies xp into its output
        return xp[:, j * H:(j + 1) * H] + hw[:, j * H:(j + 1) * H]

    unit = unit_backward if save else _value
    gate, cand, cell = units
    p_i, p_f, p_o = gate.p.split(H)
    x_i, x_f, x_o, x_g, x_c = blocks(xi, (1, 1, 1, 1, 1), H)
    i, di_x, di_p = unit(pre(0), x_i, gate._replace(p=p_i), kinds.gate)
    f, df_x, df_p = unit(pre(1), x_f, gate._replace(p=p_f), kinds.gate)
    g, dg_x, dg_p = unit(pre(2), x_g, cand, kinds.cand)
    o, do_x, do_p = unit(pre(3), x_o, gate._replace(p=p_o), kinds.gate)
    cp = c.to(f.dtype)
    c_new = f * cp + i * g
    tc, dt_x, dt_p = unit(c_new, x_c, cell, kinds.cell)
    h_new, c_new = (o * tc).to(xp.dtype), c_new.to(xp.dtype)
    out = (h_new, c_new) if m is None else (torch.where(m, h_new, h), torch.where(m, c_new, c),
                                            h_new * m)
    if not save:
        return out
    s = LSTMCoeffs(a_i=g * di_x, a_f=cp * df_x, a_g=i * dg_x, a_o=tc * do_x, p_i=g * di_p,
                   p_f=cp * df_p, p_o=tc * do_p, p_g=i * dg_p, t_x=o * dt_x, t_p=o * dt_p, f=f)
    return (*out, pack(s))


def _bwd_step(dh: Tensor, dh_out: Tensor, dc: Tensor, s: Tensor, w: Tensor, acc: Tensor,
              m: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward of one step from its coefficients ``s``: (∂/∂pre, ∂/∂h_prev, ∂/∂c_prev,
    acc + grad·∂φ/∂p per element in the layout of ξ). ``dh``/``dc`` come from the later step,
    ``dh_out`` from this step's output."""
    dh_in, dc_in = dh + dh_out, dc
    if m is not None:
        dh_in, dc_in = torch.where(m, dh_in, 0.0), torch.where(m, dc, 0.0)
    k = unpack(LSTMCoeffs, s)
    dhf = dh_in.to(s.dtype)
    d_c = dc_in.to(s.dtype) + dhf * k.t_x
    dpre = torch.cat([d_c * k.a_i, d_c * k.a_f, d_c * k.a_g, dhf * k.a_o], dim=1).to(dh.dtype)
    acc = accumulate(acc, [d_c * k.p_i, d_c * k.p_f, dhf * k.p_o, d_c * k.p_g, dhf * k.t_p])
    dh_prev, dc_prev = dpre @ w, (d_c * k.f).to(dh.dtype)
    if m is not None:
        dh_prev, dc_prev = dh_prev + torch.where(m, 0.0, dh), dc_prev + torch.where(m, 0.0, dc)
    return dpre, dh_prev, dc_prev, acc


class _Plan(NamedTuple):
    """Everything of a layer call that is not differentiated."""

    units: LSTMUnits  # of UnitTensors
    kinds: LSTMUnits  # of UnitKind
    noise: LayerNoise
    mask: Tensor | None
    save: bool


class _LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, h0, c0, w_hh, plan, *ps):  # type: ignore[override]
        T, B = xp.shape[:2]
        xp = xp.contiguous()
        w = w_hh.to(xp.dtype).contiguous()
        w_t = recurrent_transposed(w)
        h, c = h0.to(xp.dtype).contiguous(), c0.to(xp.dtype).contiguous()
        mask = plan.mask
        xi = sequence_noise(plan.noise, (T, B, 5 * h.shape[-1]), xp)
        step = loop_kernel(_fwd_step, (plan.kinds, plan.save))
        coeffs, hs, h_prev = [], [], []
        for x_t, xi_t, m_t in zip(xp.unbind(0), per_step(xi, T), per_step(mask, T), strict=True):
            h_prev.append(h)
            h, c, *rest = step(x_t, LSTMState(h, c), w_t, xi_t, m_t, plan.units)
            hs.append(rest[0] if mask is not None else h)
            if plan.save:
                coeffs.append(rest[-1])
        out = torch.stack(hs)
        ctx.save_for_backward(out, w_hh, w, mask, *ps)
        ctx.coeffs, ctx.h_prev = coeffs, h_prev
        return out, h, c

    @staticmethod
    @first_order_backward
    def backward(ctx, d_hs, d_h, d_c):  # type: ignore[override]
        out, w_hh, w, mask, *ps = ctx.saved_tensors
        coeffs = ctx.coeffs
        T, B, H = out.shape
        d_hs, dh, dc = contiguous(d_hs, d_h, d_c)
        acc = torch.zeros(B, sum(SIZES) * H, dtype=coeffs[0].dtype, device=out.device)
        step = loop_kernel(_bwd_step, inline=True)
        d_pres = [out[0]] * T
        d_outs, masks = d_hs.unbind(0), per_step(mask, T)
        for t in range(T - 1, -1, -1):
            d_pres[t], dh, dc, acc = step(dh, d_outs[t], dc, coeffs[t], w, acc, masks[t])
        d_pre = torch.stack(d_pres)
        d_w = recurrent_weight_grad(d_pre, ctx.h_prev, out, mask)
        dps = blocks(acc.sum(0), SIZES, H)
        return (d_pre, dh, dc, d_w.to(w_hh.dtype), None,
                *(d.to(p.dtype) for d, p in zip(dps, ps, strict=True)))


def fused_lstm_layer(acts: RecurrentUnits, xp: Tensor, state: tuple[Tensor, Tensor],
                     w_hh: Tensor, mask: Tensor | None, *, training: bool,
                     generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor] | None:
    """(output, h_n, c_n) of one layer and direction from the input projections ``xp`` (T, B, 4H)
    = W x + b, or None where the fused path does not apply (then the caller runs
    :func:`~noisyact.rnn.reference.lstm_step`)."""
    H = w_hh.shape[1]
    specs = unit_specs([(acts.gate, 3 * H), (acts.cand, H), (acts.cell, H)], xp)
    if specs is None:
        return None
    T, B = xp.shape[0], xp.shape[1]
    noise = layer_noise(specs, [n * H for n in SIZES], (T, B), xp, training, generator)
    units, kinds = kernel_units(LSTMUnits, specs)
    ps = [s.tensors.p for s in specs]
    h0, c0 = state
    plan = _Plan(units, kinds, noise, mask, needs_grad(xp, h0, c0, w_hh, *ps))
    return _LSTMLayer.apply(xp, h0, c0, w_hh, plan, *ps)
