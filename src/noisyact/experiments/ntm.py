"""A Neural Turing Machine (Graves et al. 2014) whose controller may be noisy.

Per step (``TASKS.md`` §2.3): the controller reads ``[x_t; r_{t-1}]``; one linear map per head
gives the key k (tanh), β (softplus), g (σ), the shift weights s (softmax over −1, 0, +1) and
γ (1 + softplus), plus erase e (σ) and add a (tanh) for write heads; addressing is content →
interpolation → circular shift → sharpening; heads read ``M_{t−1}`` before the write
``M_t = M_{t−1} ⊙ (1 − w eᵀ) + w aᵀ``; the output is ``W [h_t; r_t] + b`` (logits of the bits).

The stable choices of Collier & Beel (2018): memory starts at the constant 1e-6 (not learned,
not random), read vectors at tanh of a learned bias, head weights at a softmax of a learned
bias, the controller at zero; linear layers truncated-normal with std 1/√fan_in; head
parameters and output logits clipped to ±20. Numerical guards: ε in the cosine similarity,
the maximum subtracted before softmax(βK), w̃ clamped ≥ 1e-12 before the power γ.

Controller: an LSTM (``nn.LSTMCell`` or :class:`noisyact.NoisyLSTMCell`) or a feed-forward layer
(``tanh`` or a noisy hard-tanh). Noise lives in the controller only, as in the paper §6.6.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..modules import NoisyHardTanh
from ..rnn import NoisyLSTMCell

_CLIP = 20.0


def _trunc_normal_linear(n_in: int, n_out: int) -> nn.Linear:
    lin = nn.Linear(n_in, n_out)
    std = 1.0 / math.sqrt(n_in)
    nn.init.trunc_normal_(lin.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(lin.bias)
    return lin


def address(memory: Tensor, prev_w: Tensor, k: Tensor, beta: Tensor, g: Tensor, s: Tensor,
            gamma: Tensor) -> Tensor:
    """Head weights (B, N) from memory (B, N, M) and the head parameters (Graves §3.3).

    Content: w^c = softmax(β cos(k, M_i)); interpolation: w^g = g w^c + (1 − g) w_{t−1};
    shift: w̃(i) = Σ_j w^g(j) s(i − j) over shifts −1, 0, +1 (circular; s[:, 2] moves the
    focus one slot forward); sharpening: w ∝ w̃^γ.
    """
    dot = torch.einsum("bnm,bm->bn", memory, k)
    cos = dot / (memory.norm(dim=-1) * k.norm(dim=-1, keepdim=True) + 1e-8)
    wc = torch.softmax(beta * cos, dim=-1)  # softmax subtracts the maximum
    wg = g * wc + (1 - g) * prev_w
    shifted = (s[:, 0:1] * torch.roll(wg, -1, dims=-1) + s[:, 1:2] * wg
               + s[:, 2:3] * torch.roll(wg, 1, dims=-1))
    w = shifted.clamp_min(1e-12) ** gamma
    return w / w.sum(-1, keepdim=True)


class NTM(nn.Module):
    """NTM with ``reads`` read heads and one write head over an N×M memory.

    Args:
        n_in: input bits per step.
        n_out: output bits per step.
        controller: ``"lstm"`` or ``"ff"``.
        hidden: controller units.
        noisy: a noisy controller (NoisyLSTMCell / NoisyHardTanh with ``variant``).
        variant: the noisy variant (``"NAN"`` by default, annealed by the task).
        memory_size: N (slots) and M (slot width).
        reads: number of read heads.
        compile_step: run each time step through ``torch.compile`` (about 3× faster on a
            CPU for the presets' sizes; falls back to eager, with a warning, where
            compilation is unavailable).
    """

    def __init__(self, n_in: int, n_out: int, controller: str = "lstm", hidden: int = 100,
                 noisy: bool = False, variant: str = "NAN", memory_size: tuple[int, int] = (128, 20),
                 reads: int = 1, compile_step: bool = False) -> None:
        super().__init__()
        if controller not in ("lstm", "ff"):
            raise ValueError(f"controller must be 'lstm' or 'ff', got {controller!r}")
        self.N, self.M = memory_size
        self.reads, self.hidden, self.kind = reads, hidden, controller
        c_in = n_in + reads * self.M
        if controller == "lstm":
            self.controller: nn.Module = (NoisyLSTMCell(c_in, hidden, variant=variant) if noisy
                                          else nn.LSTMCell(c_in, hidden))
        else:
            self.controller = _trunc_normal_linear(c_in, hidden)
            self.ff_act: nn.Module = NoisyHardTanh(variant=variant) if noisy else nn.Tanh()
        self.read_params = nn.ModuleList(_trunc_normal_linear(hidden, self.M + 6)
                                         for _ in range(reads))
        self.write_params = _trunc_normal_linear(hidden, 3 * self.M + 6)
        self.out = _trunc_normal_linear(hidden + reads * self.M, n_out)
        self.read_bias = nn.Parameter(torch.randn(reads, self.M) * 0.01)
        self.weight_bias = nn.Parameter(torch.randn(reads + 1, self.N) * 0.01)
        self.register_buffer("memory_init", torch.full((self.N, self.M), 1e-6))
        self.compile_step = compile_step
        self._compiled: Any = None

    def _step_fn(self) -> Any:
        if not self.compile_step:
            return self.step
        if self._compiled is None:
            self._compiled = torch.compile(self.step, dynamic=False)
        return self._compiled

    def _head(self, params: Tensor) -> tuple[Tensor, ...]:
        p = params.clamp(-_CLIP, _CLIP)
        M = self.M
        k = torch.tanh(p[:, :M])
        beta = F.softplus(p[:, M: M + 1])
        g = torch.sigmoid(p[:, M + 1: M + 2])
        s = torch.softmax(p[:, M + 2: M + 5], dim=-1)
        gamma = 1 + F.softplus(p[:, M + 5: M + 6])
        return k, beta, g, s, gamma

    def forward(self, x: Tensor) -> Tensor:
        """Logits (T, B, n_out) for inputs (T, B, n_in)."""
        T, B, _ = x.shape
        memory = self.memory_init.expand(B, -1, -1)
        reads = [torch.tanh(self.read_bias[i]).expand(B, -1) for i in range(self.reads)]
        weights = [torch.softmax(self.weight_bias[i], -1).expand(B, -1)
                   for i in range(self.reads + 1)]
        state: Any = None
        outs = []
        step = self._step_fn()
        for t in range(T):
            try:
                out, memory, reads, weights, state = step(x[t], memory, reads, weights, state)
            except Exception as err:  # no C++ compiler, unsupported backend: run eagerly
                if step is self.step:
                    raise
                warnings.warn(f"NTM: torch.compile failed ({type(err).__name__}: {err}); "
                              "running eagerly", RuntimeWarning, stacklevel=2)
                self.compile_step, step = False, self.step
                out, memory, reads, weights, state = step(x[t], memory, reads, weights, state)
            outs.append(out)
        return torch.stack(outs)

    def step(self, x: Tensor, memory: Tensor, reads: list[Tensor], weights: list[Tensor],
             state: Any) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor], Any]:
        """One time step: controller, addressing, read (of M_{t−1}), write, output logits."""
        inp = torch.cat([x, *reads], dim=-1)
        if self.kind == "lstm":
            state = self.controller(inp, state)
            h = state[0]
        else:
            h = self.ff_act(self.controller(inp))
        new_w = [address(memory, weights[i], *self._head(self.read_params[i](h)))
                 for i in range(self.reads)]
        wp = self.write_params(h)
        ww = address(memory, weights[-1], *self._head(wp[:, : self.M + 6]))
        reads = [torch.einsum("bn,bnm->bm", w, memory) for w in new_w]
        erase = torch.sigmoid(wp[:, self.M + 6: 2 * self.M + 6].clamp(-_CLIP, _CLIP))
        add = torch.tanh(wp[:, 2 * self.M + 6:].clamp(-_CLIP, _CLIP))
        memory = (memory * (1 - ww.unsqueeze(-1) * erase.unsqueeze(1))
                  + ww.unsqueeze(-1) * add.unsqueeze(1))
        out = self.out(torch.cat([h, *reads], dim=-1)).clamp(-_CLIP, _CLIP)
        return out, memory, reads, [*new_w, ww], state


__all__ = ["NTM", "address"]
