"""Noisy LSTM and GRU cells, drop-in for ``nn.LSTMCell`` / ``nn.GRUCell``: one reference step
(:func:`~noisyact.rnn.reference.lstm_step`, ``gru_step``) through the noisy units."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .reference import (
    GRUActivations,
    LSTMActivations,
    UnitConfig,
    allow_missing_noise_keys,
    gru_step,
    lstm_step,
)

__all__ = ["NoisyGRUCell", "NoisyLSTMCell"]


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
        cfg = UnitConfig(variant, gate_variant=gate_variant, unit_variant=unit_variant,
                         gate_alpha=gate_alpha, unit_alpha=unit_alpha, gate_c=gate_c,
                         unit_c=unit_c, clip_output=clip_output,
                         gate_clip_output=gate_clip_output, unit_clip_output=unit_clip_output)
        acts_cls = LSTMActivations if self._gates == 4 else GRUActivations
        self.noise_l0 = acts_cls(hidden_size, cfg, generator, factory)
        self.config = cfg
        self.reset_parameters()
        self.register_load_state_dict_post_hook(allow_missing_noise_keys)

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

