r"""Noisy LSTM and GRU layers, drop-in for ``nn.LSTM`` / ``nn.GRU`` (paper §6.2-6.6).

Every sigmoid of the gates becomes a noisy hard-sigmoid and every tanh (candidate and cell
output) a noisy hard-tanh, each with its own learned p per unit (Eq. 9). Weights have the names,
shapes and gate order of ``torch.nn.LSTM``/``GRU``, so their state dicts load both ways.

LSTM (gate order i, f, g, o as in ``nn.LSTM``)::

    i, f, o = gate(W_i x + b_i + U_i h),  ...         noisy hard-sigmoid, p of shape (3H,)
    g       = cand(W_g x + b_g + U_g h)               noisy hard-tanh, p of shape (H,)
    c'      = f * c + i * g
    h'      = o * cell(c')                            noisy hard-tanh, p of shape (H,)

GRU (gate order r, z, n as in ``nn.GRU``)::

    r, z = gate(W_{r,z} x + b_i + U_{r,z} h + b_h)    noisy hard-sigmoid, p of shape (2H,)
    n    = cand(W_n x + b_in + r * (U_n h + b_hn))    noisy hard-tanh, p of shape (H,)
    h'   = (1 - z) * n + z * h

Speed. cuDNN and oneDNN fuse only the soft activations, so a noisy layer runs its own recurrence:
the input projections of all time steps are one matrix product, then each step is one call of a
compiled function (:mod:`noisyact.compiler`: traced once with symbolic sizes, called without
``torch.compile``'s guards and wrappers) holding the recurrent matrix product and one pass over
all units of the layer and the state update. The noise ξ of the whole sequence is drawn by one
call (counter noise from one key, :func:`noisyact.noise.noise_block`). When autograd will ask for
gradients, each forward step also returns its *backward coefficients* (every unit's value and
derivatives, combined into 11H numbers per position for the LSTM, 8H for the GRU, in the compute
dtype), so the hand-written backward step, one compiled call per step, is a few products: it
neither redraws ξ nor evaluates a unit again. The recurrent weight gradient is one matrix product
at the end, the p gradient one sum over an accumulator. This fast path covers the hard units with
output noise (NAN, NAH), input noise (NANI, NANIL, NANIS) and without noise (``"hard"``);
``"soft"`` (the exact sigmoid/tanh of ``nn.LSTM``) runs a plain per-step loop through the
modules. The fused backward is ``once_differentiable``: double backward needs
``set_fused_mode("off")``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .compiler import fused_mode, loop_kernel, run_kernel
from .functional import HALF_NORMAL_MEAN, VARIANTS
from .fused import compute_dtype, constants, unit_backward, unit_code, unit_forward
from .modules import HardSigmoid, NoisyHardSigmoid, NoisyHardTanh
from .noise import draw_keys, noise_block, uses_counter_noise
from .saturating import HARD_SIGMOID, HARD_TANH

__all__ = ["KINDS", "NoisyGRU", "NoisyGRUCell", "NoisyLSTM", "NoisyLSTMCell"]

#: Unit kinds: the paper's variants, "hard" (hard functions, no noise: Table 4's middle row) and
#: "soft" (exact sigmoid/tanh: the reference model).
KINDS = (*VARIANTS, "hard", "soft")


def _check_kind(name: str, kind: str) -> str:
    k = kind.upper() if kind.upper() in VARIANTS else kind.lower()
    if k not in KINDS:
        raise ValueError(f"{name} must be one of {', '.join(KINDS)}; got {kind!r}")
    return k


def _activation(kind: str, gate: bool, n: int, alpha: float | None, c: float | None,
                generator: torch.Generator | None, factory: dict[str, Any],
                clip_output: bool = False) -> nn.Module:
    if kind == "soft":
        return nn.Sigmoid() if gate else nn.Tanh()
    if kind == "hard":
        return HardSigmoid() if gate else nn.Hardtanh()
    cls = NoisyHardSigmoid if gate else NoisyHardTanh
    return cls(kind, alpha=alpha, c=c, num_parameters=n, dim=-1, generator=generator,
               clip_output=clip_output, **factory)


class _UnitConfig:
    """Gate and unit settings shared by layers and cells."""

    def __init__(self, variant: str, gate_variant: str | None, unit_variant: str | None,
                 gate_alpha: float | None, unit_alpha: float | None, gate_c: float | None,
                 unit_c: float | None, clip_output: bool = False,
                 gate_clip_output: bool | None = None,
                 unit_clip_output: bool | None = None) -> None:
        self.gate = _check_kind("gate_variant", gate_variant or variant)
        self.unit = _check_kind("unit_variant", unit_variant or variant)
        self.gate_alpha, self.unit_alpha = gate_alpha, unit_alpha
        self.gate_c, self.unit_c = gate_c, unit_c
        self.gate_clip = clip_output if gate_clip_output is None else gate_clip_output
        self.unit_clip = clip_output if unit_clip_output is None else unit_clip_output

    def make(self, gate: bool, n: int, generator: torch.Generator | None,
             factory: dict[str, Any]) -> nn.Module:
        if gate:
            return _activation(self.gate, True, n, self.gate_alpha, self.gate_c, generator, factory,
                               self.gate_clip)
        return _activation(self.unit, False, n, self.unit_alpha, self.unit_c, generator, factory,
                           self.unit_clip)


class RecurrentUnits(nn.Module):
    """The noisy units of one recurrent layer and direction: ``gate`` (all sigmoid gates
    side by side, p of shape (n_gates·H,)) and one hard-tanh unit per name in ``tanh_units``."""

    def __init__(self, hidden_size: int, n_gates: int, tanh_units: tuple[str, ...],
                 cfg: _UnitConfig, generator: torch.Generator | None,
                 factory: dict[str, Any]) -> None:
        super().__init__()
        self.gate = cfg.make(True, n_gates * hidden_size, generator, factory)
        for name in tanh_units:
            self.add_module(name, cfg.make(False, hidden_size, generator, factory))


def LSTMActivations(hidden_size: int, cfg: _UnitConfig, generator: torch.Generator | None,
                    factory: dict[str, Any]) -> RecurrentUnits:
    """LSTM units: gates (i, f, o), candidate ``cand`` and cell output ``cell``."""
    return RecurrentUnits(hidden_size, 3, ("cand", "cell"), cfg, generator, factory)


def GRUActivations(hidden_size: int, cfg: _UnitConfig, generator: torch.Generator | None,
                   factory: dict[str, Any]) -> RecurrentUnits:
    """GRU units: gates (r, z) and candidate ``cand``."""
    return RecurrentUnits(hidden_size, 2, ("cand",), cfg, generator, factory)


# ---------------------------------------------------------------------------------------------
# Reference steps: plain autograd through the activation modules (any kind).


def lstm_step(acts: RecurrentUnits, pre: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step from the pre-activations ``pre = W x + b + U h`` (gate order i, f, g, o)."""
    i, f, g, o = pre.chunk(4, -1)
    i, f, o = acts.gate(torch.cat([i, f, o], -1)).chunk(3, -1)
    c = f * c_prev + i * acts.cand(g)
    return o * acts.cell(c), c


def gru_step(acts: RecurrentUnits, gi: Tensor, gh: Tensor, h_prev: Tensor) -> Tensor:
    """One GRU step from ``gi = W x + b_i`` and ``gh = U h + b_h`` (gate order r, z, n)."""
    ir, iz, in_ = gi.chunk(3, -1)
    hr, hz, hn = gh.chunk(3, -1)
    r, z = acts.gate(torch.cat([ir + hr, iz + hz], -1)).chunk(2, -1)
    n = acts.cand(in_ + r * hn)
    return (1.0 - z) * n + z * h_prev


# ---------------------------------------------------------------------------------------------
# Fused steps: one compiled call per time step, the recurrent matrix product and one pass over
# all units of the layer, their noise read from ξ (pure tensor functions: see noisyact.compiler).
# In training the forward step also returns the step's backward coefficients ``s``: every
# derivative the backward step needs, so that it neither redraws ξ nor evaluates a unit again.


def _unit_value(x: Tensor, p: Tensor, xi: Tensor, c: Tensor, hp: Tensor, code: int,
                half: bool) -> tuple[Tensor, None, None]:
    """:func:`unit_forward` shaped like :func:`unit_backward` (no derivatives)."""
    return unit_forward(x, p, xi, c, hp, code, half), None, None


def _lstm_fwd_step(xp: Tensor, h: Tensor, c: Tensor, w_t: Tensor, xi: Tensor, m: Tensor | None,
                   pg: Tensor, pc: Tensor, po: Tensor, cg: Tensor, cc: Tensor, co: Tensor,
                   hg: Tensor, hc: Tensor, ho: Tensor, kg: int, sg: bool, kc: int, sc: bool,
                   ko: int, so: bool, save: bool) -> tuple[Tensor, ...]:
    """(h, c[, output][, s]) of one step; with a mask ``m`` (B, 1) the states are kept where a
    sequence has ended and the output is zero there. With ``save``, ``s`` (B, 11H) holds the
    backward coefficients (see :func:`_lstm_bwd_step`)."""
    hw = h @ w_t
    H = c.shape[-1]

    def pre(j: int) -> Tensor:
        # added gate by gate inside the units' loop: written as xp + h @ w_t, the compiler
        # makes it an addmm, which first copies xp into its output
        return xp[:, j * H:(j + 1) * H] + hw[:, j * H:(j + 1) * H]

    unit = unit_backward if save else _unit_value
    i, di_x, di_p = unit(pre(0), pg[:H], xi[:, :H], cg, hg, kg, sg)
    f, df_x, df_p = unit(pre(1), pg[H:2 * H], xi[:, H:2 * H], cg, hg, kg, sg)
    g, dg_x, dg_p = unit(pre(2), pc, xi[:, 3 * H:4 * H], cc, hc, kc, sc)
    o, do_x, do_p = unit(pre(3), pg[2 * H:], xi[:, 2 * H:3 * H], cg, hg, kg, sg)
    cp = c.to(f.dtype)
    c_new = f * cp + i * g
    tc, dt_x, dt_p = unit(c_new, po, xi[:, 4 * H:], co, ho, ko, so)
    h_new, c_new = (o * tc).to(xp.dtype), c_new.to(xp.dtype)
    out = (h_new, c_new) if m is None else (torch.where(m, h_new, h), torch.where(m, c_new, c),
                                            h_new * m)
    if not save:
        return out
    # ∂pre = d_c·[g ∂i, c ∂f, i ∂g] and dh·o' ∂o with d_c = dc + dh·o ∂t; ∂p likewise
    s = torch.cat([g * di_x, cp * df_x, i * dg_x, tc * do_x, g * di_p, cp * df_p, tc * do_p,
                   i * dg_p, o * dt_x, o * dt_p, f], dim=1)
    return (*out, s)


def _accumulate(acc: Tensor, parts: list[Tensor]) -> Tensor:
    """``acc + cat(parts, 1)`` added part by part (one loop nest, no concatenated temporary)."""
    H = parts[0].shape[1]
    return torch.cat([acc[:, j * H:(j + 1) * H] + x for j, x in enumerate(parts)], dim=1)


def _lstm_bwd_step(dh: Tensor, dh_out: Tensor, dc: Tensor, s: Tensor, w: Tensor, acc: Tensor,
                   m: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward of one step from its coefficients ``s``: (∂/∂pre, ∂/∂h_prev, ∂/∂c_prev,
    acc + grad·∂φ/∂p per element in the order of ξ: gates i, f, o, candidate, cell). ``dh``/``dc``
    come from the later step, ``dh_out`` from this step's output."""
    H = dh.shape[-1]
    dh_in, dc_in = dh + dh_out, dc
    if m is not None:
        dh_in, dc_in = torch.where(m, dh_in, 0.0), torch.where(m, dc, 0.0)
    a_i, a_f, a_g, a_o, p_i, p_f, p_o, p_g, t_x, t_p, f = s.split(H, dim=1)
    dhf = dh_in.to(s.dtype)
    d_c = dc_in.to(s.dtype) + dhf * t_x
    dpre = torch.cat([d_c * a_i, d_c * a_f, d_c * a_g, dhf * a_o], dim=1).to(dh.dtype)
    acc = _accumulate(acc, [d_c * p_i, d_c * p_f, dhf * p_o, d_c * p_g, dhf * t_p])
    dh_prev, dc_prev = dpre @ w, (d_c * f).to(dh.dtype)
    if m is not None:
        dh_prev, dc_prev = dh_prev + torch.where(m, 0.0, dh), dc_prev + torch.where(m, 0.0, dc)
    return dpre, dh_prev, dc_prev, acc


def _gru_fwd_step(gi: Tensor, h: Tensor, w_t: Tensor, b: Tensor, xi: Tensor, m: Tensor | None,
                  pg: Tensor, pc: Tensor, cg: Tensor, cc: Tensor, hg: Tensor, hc: Tensor, kg: int,
                  sg: bool, kc: int, sc: bool, save: bool) -> tuple[Tensor, ...]:
    """(h[, output][, s]) of one step (mask as in :func:`_lstm_fwd_step`); ``s`` (B, 8H): the
    backward coefficients (see :func:`_gru_bwd_step`)."""
    hw = h @ w_t
    H = h.shape[-1]

    def gh(j: int) -> Tensor:  # U h + b_h of one gate (not as one addmm: see _lstm_fwd_step)
        return b[j * H:(j + 1) * H] + hw[:, j * H:(j + 1) * H]

    unit = unit_backward if save else _unit_value
    r, dr_x, dr_p = unit(gi[:, :H] + gh(0), pg[:H], xi[:, :H], cg, hg, kg, sg)
    z, dz_x, dz_p = unit(gi[:, H:2 * H] + gh(1), pg[H:], xi[:, H:2 * H], cg, hg, kg, sg)
    hn = gh(2).to(r.dtype)
    n, dn_x, dn_p = unit(gi[:, 2 * H:] + r * hn, pc, xi[:, 2 * H:], cc, hc, kc, sc)
    hp = h.to(z.dtype)
    h_new = ((1.0 - z) * n + z * hp).to(gi.dtype)
    out = (h_new,) if m is None else (torch.where(m, h_new, h), h_new * m)
    if not save:
        return out
    # every gradient of the step is dh times one of these: ∂n-input, ∂r-input, ∂z-input, ...
    a_n, e_r = (1.0 - z) * dn_x, hp - n
    s = torch.cat([a_n * hn * dr_x, e_r * dz_x, a_n, a_n * r, a_n * hn * dr_p, e_r * dz_p,
                   (1.0 - z) * dn_p, z], dim=1)
    return (*out, s)


def _gru_bwd_step(dh: Tensor, dh_out: Tensor, s: Tensor, w: Tensor, acc: Tensor,
                  m: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward of one step from its coefficients ``s``: (∂/∂gi, ∂/∂gh, ∂/∂h_prev,
    acc + grad·∂φ/∂p per element: r, z, n)."""
    H = dh.shape[-1]
    dh_in = dh + dh_out
    if m is not None:
        dh_in = torch.where(m, dh_in, 0.0)
    a_r, a_z, a_n, a_nr, p_r, p_z, p_n, z = s.split(H, dim=1)
    dhf = dh_in.to(s.dtype)
    da_r, da_z = dhf * a_r, dhf * a_z
    dgi = torch.cat([da_r, da_z, dhf * a_n], dim=1).to(dh.dtype)
    dgh = torch.cat([da_r, da_z, dhf * a_nr], dim=1).to(dh.dtype)
    acc = _accumulate(acc, [dhf * p_r, dhf * p_z, dhf * p_n])
    dh_prev = (dhf * z).to(dh.dtype) + dgh @ w
    if m is not None:
        dh_prev = dh_prev + torch.where(m, 0.0, dh)
    return dgi, dgh, dh_prev, acc


def _layer_noise(like: Tensor, key: Tensor) -> Tensor:
    return noise_block(like, key).to(like.dtype)


def _unit_spec(m: nn.Module, n: int, like: Tensor) -> tuple[Any, ...] | None:
    """(p, c, hp, E[ε], code, half) of a unit the fused kernels handle, else None."""
    cdt = compute_dtype(like.dtype)
    dev = like.device
    if isinstance(m, NoisyHardSigmoid | NoisyHardTanh):
        assert m.fn.affine is not None
        p = m.p if m.p is not None else torch.zeros(n, dtype=cdt, device=dev)
        return (p, m.c.to(cdt), constants(m.alpha, *m.fn.affine, cdt, dev),
                HALF_NORMAL_MEAN if m.variant == "NAH" else 0.0,
                *unit_code(m.variant, m.clip_output))
    if isinstance(m, HardSigmoid) or (
        type(m) is nn.Hardtanh and (m.min_val, m.max_val) == (-1.0, 1.0)
    ):
        affine = HARD_SIGMOID.affine if isinstance(m, HardSigmoid) else HARD_TANH.affine
        assert affine is not None
        zero = torch.zeros((), dtype=cdt, device=dev)
        return (torch.zeros(n, dtype=cdt, device=dev), zero,
                constants(1.0, *affine, cdt, dev), 0.0, 0, False)
    return None


def _step_mask(mask: Tensor | None, t: int) -> Tensor | None:
    return None if mask is None else mask[t]


def _advance(m: Tensor | None, new: tuple[Tensor, ...],
             old: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
    """The states after a step (kept where a packed sequence has ended) and the step's output."""
    if m is None:
        return new, new[0]
    return tuple(torch.where(m, n, o) for n, o in zip(new, old, strict=True)), new[0] * m


def _sequence_noise(noise: Tensor | None, key: Tensor | None, shape: tuple[int, int, int],
                    like: Tensor) -> Tensor:
    """ξ of every step of one layer: ``noise`` as given (the eval expectation (B, G), or
    (T, B, G) drawn with :func:`torch.randn`), or counter noise (T, B, G) from ``key``, generated
    by one compiled call."""
    if key is None:
        assert noise is not None
        return noise
    return run_kernel(_layer_noise, like.new_empty(shape), key)


def _noise_at(xi: Tensor, t: int) -> Tensor:
    return xi[t] if xi.dim() == 3 else xi


def _recurrent_weight_grad(d_pre: Tensor, h_prev: list[Tensor], out: Tensor,
                           mask: Tensor | None) -> Tensor:
    """Σ_t d_pre[t]ᵀ h_{t−1} as GEMMs; without a mask the outputs are the states, so
    h_1 .. h_{T−1} are ``out[:-1]`` and nothing is stacked."""
    G, H = d_pre.shape[-1], h_prev[0].shape[-1]
    if mask is not None:
        return d_pre.reshape(-1, G).t() @ torch.stack(h_prev).reshape(-1, H)
    d_w = d_pre[0].t() @ h_prev[0]
    if d_pre.shape[0] > 1:
        d_w = d_w.addmm_(d_pre[1:].reshape(-1, G).t(), out[:-1].reshape(-1, H))
    return d_w


def _needs_grad(*ts: Tensor) -> bool:
    """Whether autograd will ask a layer for gradients (then its forward saves coefficients)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _contiguous(*ts: Tensor) -> list[Tensor]:
    return [t.contiguous() for t in ts]


class _LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, h0, c0, w_hh, pg, pc, po, consts, codes, noise, key, mask, save):  # type: ignore[override]
        T, B = xp.shape[:2]
        xp = xp.contiguous()
        w_t = w_hh.to(xp.dtype).t().contiguous()
        h, c = h0.to(xp.dtype).contiguous(), c0.to(xp.dtype).contiguous()
        units = _contiguous(pg, pc, po, *consts)
        xi = _sequence_noise(noise, key, (T, B, 5 * h.shape[-1]), xp)
        step = loop_kernel(_lstm_fwd_step, (*codes, save))
        coeffs, hs, h_prev = [], [], []
        for t in range(T):
            h_prev.append(h)
            h, c, *rest = step(xp[t], h, c, w_t, _noise_at(xi, t), _step_mask(mask, t), *units)
            hs.append(rest[0] if mask is not None else h)
            if save:
                coeffs.append(rest[-1])
        out = torch.stack(hs)
        ctx.save_for_backward(out, w_hh, pg, pc, po, mask)
        ctx.coeffs, ctx.h_prev = coeffs, h_prev
        return out, h, c

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs, d_h, d_c):  # type: ignore[override]
        out, w_hh, pg, pc, po, mask = ctx.saved_tensors
        coeffs = ctx.coeffs
        T, B, H = out.shape
        w = w_hh.to(out.dtype).contiguous()
        d_hs, dh, dc = _contiguous(d_hs, d_h, d_c)
        acc = torch.zeros(B, 5 * H, dtype=coeffs[0].dtype, device=out.device)
        step = loop_kernel(_lstm_bwd_step, inline=True)
        d_pres = [out[0]] * T
        for t in range(T - 1, -1, -1):
            d_pres[t], dh, dc, acc = step(dh, d_hs[t], dc, coeffs[t], w, acc, _step_mask(mask, t))
        d_pre = torch.stack(d_pres)
        d_w = _recurrent_weight_grad(d_pre, ctx.h_prev, out, mask)
        dp = acc.sum(0)
        return (d_pre, dh, dc, d_w.to(w_hh.dtype), dp[:3 * H].to(pg.dtype),
                dp[3 * H:4 * H].to(pc.dtype), dp[4 * H:].to(po.dtype), None, None, None, None,
                None, None)


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, pg, pc, consts, codes, noise, key, mask, save):  # type: ignore[override]
        T, B, G = gi.shape
        gi = gi.contiguous()
        w_t = w_hh.to(gi.dtype).t().contiguous()
        b = b_hh.to(gi.dtype).contiguous()
        h = h0.to(gi.dtype).contiguous()
        units = _contiguous(pg, pc, *consts)
        xi = _sequence_noise(noise, key, (T, B, G), gi)
        step = loop_kernel(_gru_fwd_step, (*codes, save))
        coeffs, hs, h_prev = [], [], []
        for t in range(T):
            h_prev.append(h)
            h, *rest = step(gi[t], h, w_t, b, _noise_at(xi, t), _step_mask(mask, t), *units)
            hs.append(rest[0] if mask is not None else h)
            if save:
                coeffs.append(rest[-1])
        out = torch.stack(hs)
        ctx.save_for_backward(out, w_hh, b_hh, pg, pc, mask)
        ctx.coeffs, ctx.h_prev = coeffs, h_prev
        return out, h

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs, d_h):  # type: ignore[override]
        out, w_hh, b_hh, pg, pc, mask = ctx.saved_tensors
        coeffs = ctx.coeffs
        T, B, H = out.shape
        w = w_hh.to(out.dtype).contiguous()
        d_hs, dh = _contiguous(d_hs, d_h)
        acc = torch.zeros(B, 3 * H, dtype=coeffs[0].dtype, device=out.device)
        step = loop_kernel(_gru_bwd_step, inline=True)
        d_gi, d_gh = [out[0]] * T, [out[0]] * T
        for t in range(T - 1, -1, -1):
            d_gi[t], d_gh[t], dh, acc = step(dh, d_hs[t], coeffs[t], w, acc, _step_mask(mask, t))
        d_gh_all = torch.stack(d_gh)
        d_w = _recurrent_weight_grad(d_gh_all, ctx.h_prev, out, mask)
        d_b = d_gh_all.reshape(-1, 3 * H).sum(0)
        dp = acc.sum(0)
        return (torch.stack(d_gi), dh, d_w.to(w_hh.dtype), d_b.to(b_hh.dtype),
                dp[:2 * H].to(pg.dtype), dp[2 * H:].to(pc.dtype), None, None, None, None, None,
                None)

# ---------------------------------------------------------------------------------------------
# Layers


def _reverse_time(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of a (T, B, *) tensor within its own length."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    n = lengths.to(x.device).unsqueeze(0)
    idx = torch.where(t < n, n - 1 - t, t)
    return x.gather(0, idx.unsqueeze(-1).expand_as(x))


class _NoisyRNNBase(nn.Module):
    _gates: int  # 4 (LSTM) or 3 (GRU)
    _mode: str

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        variant: str = "NAH",
        gate_variant: str | None = None,
        unit_variant: str | None = None,
        gate_alpha: float | None = None,
        unit_alpha: float | None = None,
        gate_c: float | None = None,
        unit_c: float | None = None,
        generator: torch.Generator | None = None,
        clip_output: bool = False,
        gate_clip_output: bool | None = None,
        unit_clip_output: bool | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (isinstance(dropout, int | float) and 0 <= dropout <= 1):
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if proj_size:
            raise ValueError("proj_size is not supported by noisy recurrent layers")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout = float(dropout)
        self.proj_size = 0
        self.generator = generator
        self.config = _UnitConfig(variant, gate_variant, unit_variant, gate_alpha, unit_alpha,
                                  gate_c, unit_c, clip_output, gate_clip_output,
                                  unit_clip_output)
        factory = {"device": device, "dtype": dtype}
        G = self._gates * hidden_size
        acts_cls = LSTMActivations if self._gates == 4 else GRUActivations
        for layer in range(num_layers):
            for sfx in self._suffixes():
                in_size = input_size if layer == 0 else hidden_size * self.num_directions
                self.register_parameter(f"weight_ih_l{layer}{sfx}",
                                        nn.Parameter(torch.empty(G, in_size, **factory)))
                self.register_parameter(f"weight_hh_l{layer}{sfx}",
                                        nn.Parameter(torch.empty(G, hidden_size, **factory)))
                if bias:
                    self.register_parameter(f"bias_ih_l{layer}{sfx}",
                                            nn.Parameter(torch.empty(G, **factory)))
                    self.register_parameter(f"bias_hh_l{layer}{sfx}",
                                            nn.Parameter(torch.empty(G, **factory)))
                self.add_module(f"noise_l{layer}{sfx}",
                                acts_cls(hidden_size, self.config, generator, factory))
        self.reset_parameters()
        self.register_load_state_dict_post_hook(_allow_missing_noise_keys)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self) -> list[str]:
        return ["", "_reverse"] if self.bidirectional else [""]

    def reset_parameters(self) -> None:
        """Weights and biases U(−1/√H, 1/√H) as in ``nn.LSTM``; p of each unit U(−1, 1)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for w in self.parameters(recurse=False):
                w.uniform_(-bound, bound)
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def flatten_parameters(self) -> None:
        """No-op, for drop-in compatibility with ``nn.LSTM``/``nn.GRU``."""

    def torch_state_dict(self) -> dict[str, Tensor]:
        """The state dict without the noise parameters: loads into ``nn.LSTM``/``nn.GRU``."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("noise_l")}

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", gate={self.config.gate}, unit={self.config.unit}"

    def _layer_weights(self, layer: int, sfx: str) -> tuple[Tensor, Tensor, Tensor | None,
                                                            Tensor | None]:
        g = self.__getattr__
        b_ih = g(f"bias_ih_l{layer}{sfx}") if self.bias else None
        b_hh = g(f"bias_hh_l{layer}{sfx}") if self.bias else None
        return g(f"weight_ih_l{layer}{sfx}"), g(f"weight_hh_l{layer}{sfx}"), b_ih, b_hh

    def _noise(self, specs: list[tuple[Any, ...]], sizes: list[int], T: int, B: int,
               like: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(ξ, key) for the fused layer (see :func:`_sequence_noise`): in training one key for the
        counter noise of the whole sequence (noise source "kernel") or ξ of shape (T, B, G) from
        :func:`torch.randn` ("torch"); in eval E[ε] of shape (B, G), without a random op."""
        total = sum(sizes)
        if self.training and any(float(spec[1]) != 0.0 for spec in specs):
            if uses_counter_noise(T * B * total + 1):
                return None, draw_keys(1, self.generator, like.device)[0]
            return torch.randn(T, B, total, dtype=like.dtype, device=like.device,
                               generator=self.generator), None
        means = torch.cat([torch.full((n,), spec[3], dtype=like.dtype, device=like.device)
                           for n, spec in zip(sizes, specs, strict=True)])
        # materialised (not a stride-0 view): the compiled steps take contiguous tensors
        return means.expand(B, total).contiguous(), None

    def _fused_specs(self, acts: nn.Module, like: Tensor) -> list[Any] | None:
        if fused_mode() == "off" or torch.compiler.is_compiling():
            return None
        H = self.hidden_size
        units = [(acts.gate, (self._gates - 1) * H)] + [(m, H) for m in self._tanh_units(acts)]
        specs = [_unit_spec(m, n, like) for m, n in units]
        return None if any(s is None for s in specs) else specs

    def _tanh_units(self, acts: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def _parse_input(self, input: Tensor | PackedSequence):
        """(x as (T, B, F), lengths or None, batched, packed input or None)."""
        if isinstance(input, PackedSequence):
            x, lengths = pad_packed_sequence(input, batch_first=False)
            return x, lengths, True, input
        if not isinstance(input, Tensor) or input.dim() not in (2, 3):
            shape = list(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"input must be a 2-D (unbatched) or 3-D tensor, got {shape}")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, expected input_size="
                             f"{self.input_size}")
        if x.shape[0] == 0:
            raise ValueError("input has sequence length 0 (as nn.LSTM/nn.GRU, at least one step "
                             "is needed)")
        return x, None, batched, None

    def _parse_state(self, hx: Tensor | None, B: int, batched: bool, like: Tensor,
                     name: str) -> Tensor:
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if hx is None:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        if not batched:
            if hx.dim() != 2:
                raise ValueError(f"{name} must be 2-D for unbatched input, got {list(hx.shape)}")
            hx = hx.unsqueeze(1)
        if tuple(hx.shape) != shape:
            raise ValueError(f"{name} has shape {list(hx.shape)}, expected {list(shape)}")
        if hx.dtype != like.dtype and not torch.is_autocast_enabled(like.device.type):
            # nn.LSTM/nn.GRU raise a RuntimeError here (from their kernels); same type, but
            # naming the argument and both dtypes
            raise RuntimeError(f"{name} dtype ({hx.dtype}) does not match input dtype "
                               f"({like.dtype}). Convert the state: {name}.to({like.dtype})")
        return hx

    def _format_output(self, out: Tensor, packed: PackedSequence | None,
                       batched: bool) -> Tensor | PackedSequence:
        if packed is not None:
            idx = packed.sorted_indices
            srt = out if idx is None else out.index_select(1, idx)
            bs = packed.batch_sizes.tolist()
            data = torch.cat([srt[t, :n] for t, n in enumerate(bs)])
            return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                  packed.unsorted_indices)
        if not batched:
            return out.squeeze(1)
        return out.transpose(0, 1) if self.batch_first else out

    # The recurrence is a Python loop over time steps around compiled kernels: a compiled model
    # runs it as it is (a graph break) instead of unrolling T steps into one huge graph.
    @torch.compiler.disable
    def _run(self, input: Tensor | PackedSequence, states: list[Tensor | None]):
        x, lengths, batched, packed = self._parse_input(input)
        w = self.weight_ih_l0
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            # nn.LSTM/nn.GRU's check and message
            raise ValueError(f"RNN input dtype ({x.dtype}) does not match weight dtype "
                             f"({w.dtype}). Convert input: input.to({w.dtype}), or convert "
                             f"model: model.to({x.dtype})")
        T, B = x.shape[0], x.shape[1]
        names = ["h_0", "c_0"]
        st = [self._parse_state(s, B, batched, x, names[i]) for i, s in enumerate(states)]
        mask = None
        if lengths is not None:
            mask = (torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1).to(x.device)
        finals: list[list[Tensor]] = [[] for _ in st]
        for layer in range(self.num_layers):
            outs = []
            for d, sfx in enumerate(self._suffixes()):
                k = layer * self.num_directions + d
                xin = x if d == 0 else _reverse_time(x, lengths)
                out, *last = self._layer(xin, [s[k] for s in st], layer, sfx, mask)
                outs.append(out if d == 0 else _reverse_time(out, lengths))
                for f, v in zip(finals, last, strict=True):
                    f.append(v)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, True)
        out = self._format_output(x, packed, batched)
        fin = [torch.stack(f) for f in finals]
        if not batched:
            fin = [f.squeeze(1) for f in fin]
        return out, fin


def _allow_missing_noise_keys(module: nn.Module, incompatible: Any) -> None:
    """An ``nn.LSTM``/``nn.GRU`` state dict loads strictly: only the noise parameters may miss."""
    missing = incompatible.missing_keys
    missing[:] = [k for k in missing if not any(part.startswith("noise_l")
                                                for part in k.split("."))]


class NoisyLSTM(_NoisyRNNBase):
    r"""Multi-layer LSTM with noisy hard gates and units, drop-in for :class:`torch.nn.LSTM`.

    .. math::
        \begin{array}{ll}
        i_t, f_t, o_t = \phi_s(W x_t + b + U h_{t-1}) & \text{noisy hard-sigmoid} \\
        g_t = \phi_t(W_g x_t + b_g + U_g h_{t-1})       & \text{noisy hard-tanh} \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t,\quad h_t = o_t \odot \phi_t(c_t)
        \end{array}

    ``input_size``, ``hidden_size``, ``num_layers``, ``bias``, ``batch_first``, ``dropout``,
    ``bidirectional``, ``device`` and ``dtype`` are as in :class:`torch.nn.LSTM` (``proj_size`` is
    not supported).

    Args:
        variant: kind of every unit: ``"NAN"``, ``"NAH"``, ``"NANI"``, ``"NANIL"``, ``"NANIS"``,
            ``"hard"`` (hard functions without noise) or ``"soft"`` (sigmoid/tanh: exactly
            ``nn.LSTM``). Default ``"NAH"``.
        gate_variant: overrides ``variant`` for the gates.
        unit_variant: overrides ``variant`` for the tanh units.
        gate_alpha: α of the gates (default as in :class:`~noisyact.NoisyHardSigmoid`).
        unit_alpha: α of the tanh units (default as in :class:`~noisyact.NoisyHardTanh`).
        gate_c: c of the gates (default as in :class:`~noisyact.NoisyHardSigmoid`).
        unit_c: c of the tanh units (default as in :class:`~noisyact.NoisyHardTanh`).
        generator: optional :class:`torch.Generator` for the noise.
        clip_output: clip the output of every noisy unit to the range of its h ([0, 1] for the
            gates, [−1, 1] for the tanh units), with zero gradient where the clip is active, as
            the authors' paper-era code. Default ``False`` (the paper's Eq. 12; see the warning).
        gate_clip_output, unit_clip_output: override ``clip_output`` for the gates / for the
            tanh units.

    .. warning::
        With α > 1 (the default) the NAN/NAH units are unbounded by design: past saturation the
        (1 − α)·u term grows linearly (a gate gives −1.35 for a pre-activation of 100), so a
        layer fed large inputs can grow its cell state to inf/NaN where ``nn.LSTM`` and
        ``variant="hard"`` stay bounded. ``clip_output=True`` (or α = 1) keeps every unit in
        the range of its h.

    Inputs: ``input, (h_0, c_0)`` exactly as ``nn.LSTM`` (batched, unbatched or
    :class:`~torch.nn.utils.rnn.PackedSequence`). Outputs: ``output, (h_n, c_n)``.

    The noisy units of layer k live in the submodule ``noise_l{k}`` (``noise_l{k}_reverse``):
    ``.gate`` (p of shape (3H,), order i, f, o), ``.cand`` and ``.cell`` (p of shape (H,)).
    Eval mode is deterministic (the expectation of every unit, Eq. 13).

    Example::

        >>> rnn = NoisyLSTM(10, 20, num_layers=2, variant="NAH")
        >>> rnn.load_state_dict(nn.LSTM(10, 20, num_layers=2).state_dict())  # noise p kept
        <All keys matched successfully>
        >>> output, (h_n, c_n) = rnn(torch.randn(5, 3, 10))
    """

    _gates = 4
    _mode = "LSTM"

    def _tanh_units(self, acts: nn.Module) -> list[nn.Module]:
        return [acts.cand, acts.cell]

    def forward(self, input: Tensor | PackedSequence,
                hx: tuple[Tensor, Tensor] | None = None):
        states = [None, None] if hx is None else list(hx)
        out, (h_n, c_n) = self._run(input, states)
        return out, (h_n, c_n)

    def _layer(self, x: Tensor, state: list[Tensor], layer: int, sfx: str,
               mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        w_ih, w_hh, b_ih, b_hh = self._layer_weights(layer, sfx)
        acts = getattr(self, f"noise_l{layer}{sfx}")
        bias = None if b_ih is None or b_hh is None else b_ih + b_hh
        xp = nn.functional.linear(x, w_ih, bias)
        h0, c0 = state
        T, B = x.shape[0], x.shape[1]
        specs = self._fused_specs(acts, xp)
        if specs is not None:
            H = self.hidden_size
            noise, key = self._noise(specs, [3 * H, H, H], T, B, xp)
            consts = [s[1] for s in specs] + [s[2] for s in specs]
            codes = tuple(v for s in specs for v in s[4:])
            ps = [s[0] for s in specs]
            return _LSTMLayer.apply(xp, h0, c0, w_hh, *ps, consts, codes, noise, key, mask,
                                    _needs_grad(xp, h0, c0, w_hh, *ps))
        h, c = h0, c0
        outs = []
        for t in range(T):
            new = lstm_step(acts, torch.addmm(xp[t], h, w_hh.t()), c)
            (h, c), out = _advance(_step_mask(mask, t), new, (h, c))
            outs.append(out)
        return torch.stack(outs), h, c


class NoisyGRU(_NoisyRNNBase):
    r"""Multi-layer GRU with noisy hard gates and candidate, drop-in for :class:`torch.nn.GRU`.

    .. math::
        \begin{array}{ll}
        r_t, z_t = \phi_s(W x_t + b_i + U h_{t-1} + b_h) & \text{noisy hard-sigmoid} \\
        n_t = \phi_t(W_n x_t + b_{in} + r_t \odot (U_n h_{t-1} + b_{hn})) & \text{noisy hard-tanh}\\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{array}

    Arguments (``clip_output`` included, see the warning there) as :class:`NoisyLSTM`; inputs
    ``input, h_0`` and outputs ``output, h_n`` as ``nn.GRU``. Units of layer k:
    ``noise_l{k}.gate`` (p of shape (2H,), order r, z) and ``noise_l{k}.cand`` (p of shape
    (H,)).

    Example::

        >>> rnn = NoisyGRU(10, 20, batch_first=True, variant="NAH")
        >>> output, h_n = rnn(torch.randn(3, 5, 10))
    """

    _gates = 3
    _mode = "GRU"

    def _tanh_units(self, acts: nn.Module) -> list[nn.Module]:
        return [acts.cand]

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None):
        out, (h_n,) = self._run(input, [hx])
        return out, h_n

    def _layer(self, x: Tensor, state: list[Tensor], layer: int, sfx: str,
               mask: Tensor | None) -> tuple[Tensor, Tensor]:
        w_ih, w_hh, b_ih, b_hh = self._layer_weights(layer, sfx)
        acts = getattr(self, f"noise_l{layer}{sfx}")
        gi = nn.functional.linear(x, w_ih, b_ih)
        (h0,) = state
        T, B = x.shape[0], x.shape[1]
        specs = self._fused_specs(acts, gi)
        if specs is not None:
            H = self.hidden_size
            noise, key = self._noise(specs, [2 * H, H], T, B, gi)
            consts = [s[1] for s in specs] + [s[2] for s in specs]
            codes = tuple(v for s in specs for v in s[4:])
            b = b_hh if b_hh is not None else gi.new_zeros(3 * H)
            ps = [s[0] for s in specs]
            return _GRULayer.apply(gi, h0, w_hh, b, *ps, consts, codes, noise, key, mask,
                                   _needs_grad(gi, h0, w_hh, b, *ps))
        h = h0
        outs = []
        for t in range(T):
            new = gru_step(acts, gi[t], nn.functional.linear(h, w_hh, b_hh), h)
            (h,), out = _advance(_step_mask(mask, t), (new,), (h,))
            outs.append(out)
        return torch.stack(outs), h


# ---------------------------------------------------------------------------------------------
# Cells


class _NoisyCellBase(nn.Module):
    _gates: int

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                 variant: str = "NAH", gate_variant: str | None = None,
                 unit_variant: str | None = None, gate_alpha: float | None = None,
                 unit_alpha: float | None = None, gate_c: float | None = None,
                 unit_c: float | None = None, generator: torch.Generator | None = None,
                 clip_output: bool = False, gate_clip_output: bool | None = None,
                 unit_clip_output: bool | None = None) -> None:
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        factory = {"device": device, "dtype": dtype}
        G = self._gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G, **factory))
            self.bias_hh = nn.Parameter(torch.empty(G, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        cfg = _UnitConfig(variant, gate_variant, unit_variant, gate_alpha, unit_alpha, gate_c,
                          unit_c, clip_output, gate_clip_output, unit_clip_output)
        acts_cls = LSTMActivations if self._gates == 4 else GRUActivations
        self.noise_l0 = acts_cls(hidden_size, cfg, generator, factory)
        self.config = cfg
        self.reset_parameters()
        self.register_load_state_dict_post_hook(_allow_missing_noise_keys)

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for w in self.parameters(recurse=False):
                w.uniform_(-bound, bound)

    def _input(self, input: Tensor) -> tuple[Tensor, bool]:
        if input.dim() not in (1, 2):
            raise ValueError(f"input must be 1-D (unbatched) or 2-D, got {list(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input has {input.shape[-1]} features, expected input_size="
                             f"{self.input_size}")
        batched = input.dim() == 2
        return (input if batched else input.unsqueeze(0)), batched

    def _state(self, hx: Tensor | None, x: Tensor, batched: bool, name: str) -> Tensor:
        if hx is None:
            return x.new_zeros(x.shape[0], self.hidden_size)
        h = hx if batched else hx.unsqueeze(0)
        if tuple(h.shape) != (x.shape[0], self.hidden_size):
            raise ValueError(f"{name} has shape {list(hx.shape)}, expected "
                             f"{[x.shape[0], self.hidden_size] if batched else [self.hidden_size]}")
        return h

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s + f", gate={self.config.gate}, unit={self.config.unit}"


class NoisyLSTMCell(_NoisyCellBase):
    """One LSTM step with noisy units, drop-in for :class:`torch.nn.LSTMCell`.

    Keyword arguments (``variant``, ..., ``clip_output``) as :class:`NoisyLSTM`.

    Example::

        >>> cell = NoisyLSTMCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10))
    """

    _gates = 4

    def forward(self, input: Tensor,
                hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        x, batched = self._input(input)
        h = self._state(None if hx is None else hx[0], x, batched, "h_0")
        c = self._state(None if hx is None else hx[1], x, batched, "c_0")
        pre = nn.functional.linear(x, self.weight_ih, self.bias_ih)
        pre = pre + nn.functional.linear(h, self.weight_hh, self.bias_hh)
        h, c = lstm_step(self.noise_l0, pre, c)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class NoisyGRUCell(_NoisyCellBase):
    """One GRU step with noisy units, drop-in for :class:`torch.nn.GRUCell`.

    Keyword arguments (``variant``, ..., ``clip_output``) as :class:`NoisyLSTM`.

    Example::

        >>> cell = NoisyGRUCell(10, 20)
        >>> h = cell(torch.randn(3, 10))
    """

    _gates = 3

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, batched = self._input(input)
        h = self._state(hx, x, batched, "hx")
        gi = nn.functional.linear(x, self.weight_ih, self.bias_ih)
        gh = nn.functional.linear(h, self.weight_hh, self.bias_hh)
        h = gru_step(self.noise_l0, gi, gh, h)
        return h if batched else h.squeeze(0)


def from_torch(module: nn.LSTM | nn.GRU | nn.LSTMCell | nn.GRUCell,
               **kwargs: Any) -> nn.Module:
    """The noisy counterpart of a torch recurrent module, with its weights (for ``noisify``)."""
    p = next(module.parameters())
    factory = {"device": p.device, "dtype": p.dtype}
    new: nn.Module
    if isinstance(module, nn.LSTMCell | nn.GRUCell):
        cell_cls = NoisyLSTMCell if isinstance(module, nn.LSTMCell) else NoisyGRUCell
        new = cell_cls(module.input_size, module.hidden_size, module.bias, **factory, **kwargs)
    else:
        if getattr(module, "proj_size", 0):
            raise ValueError("LSTM with proj_size is not supported")
        cls = NoisyLSTM if isinstance(module, nn.LSTM) else NoisyGRU
        new = cls(module.input_size, module.hidden_size, module.num_layers, module.bias,
                  module.batch_first, module.dropout, module.bidirectional, **factory, **kwargs)
    new.load_state_dict(module.state_dict())
    new.train(module.training)
    return new
