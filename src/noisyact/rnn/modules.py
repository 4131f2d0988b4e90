r"""Noisy LSTM and GRU layers, drop-in for ``nn.LSTM`` / ``nn.GRU`` (paper §6.2-6.6).

Every sigmoid of the gates becomes a noisy hard-sigmoid and every tanh (candidate and cell
output) a noisy hard-tanh, each with its own learned p per unit (Eq. 9). Weights have the names,
shapes and gate order of ``torch.nn.LSTM``/``GRU``, so their state dicts load both ways.

A layer runs each layer and direction through the fused backend (:func:`fused_lstm_layer`,
:func:`fused_gru_layer`: one compiled call per time step) and, where that does not apply
(``soft`` units, fused mode ``"off"``, inside ``torch.compile``), through a loop over the
reference steps :func:`~noisyact.rnn.reference.lstm_step` / ``gru_step``. The cells are in
:mod:`noisyact.rnn.cells`.

The constructors take the arguments of ``nn.LSTM``/``nn.GRU`` plus the unit settings, hence
more than eight parameters (the drop-in signature). About 450 lines: most of it is the drop-in
input, state and output handling of ``nn.LSTM``/``nn.GRU`` and the two classes' docstrings.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from ._fused_gru import fused_gru_layer
from ._fused_lstm import fused_lstm_layer
from .reference import (
    GRUActivations,
    LSTMActivations,
    UnitConfig,
    allow_missing_noise_keys,
    gru_step,
    lstm_step,
)

__all__ = ["NoisyGRU", "NoisyLSTM", "from_torch"]


def _step_mask(mask: Tensor | None, t: int) -> Tensor | None:
    return None if mask is None else mask[t]


def _advance(m: Tensor | None, new: tuple[Tensor, ...],
             old: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
    """The states after a step (kept where a packed sequence has ended) and the step's output."""
    if m is None:
        return new, new[0]
    return tuple(torch.where(m, n, o) for n, o in zip(new, old, strict=True)), new[0] * m



def _reverse_time(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of a (T, B, *) tensor within its own length."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    n = lengths.to(x.device).unsqueeze(0)
    idx = torch.where(t < n, n - 1 - t, t)
    return x.gather(0, idx.unsqueeze(-1).expand_as(x))



def _compiler_disable_lazily(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compiler.disable(fn)``, made when first needed.

    Decorating at import would import Dynamo (≈ 1.7 s of every ``import noisyact``, also for
    users who never compile). Until ``torch._dynamo`` is imported nothing can be compiling, so
    ``fn`` runs as it is; once it is, every call goes through the disabled function (Dynamo
    runs it as a graph break, also when it is first made inside a trace).
    """
    disabled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return run

class _NoisyRNNBase(nn.Module):
    _gates: int  # 4 (LSTM) or 3 (GRU)

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
        self.config = UnitConfig(variant, gate_variant=gate_variant, unit_variant=unit_variant,
                                 gate_alpha=gate_alpha, unit_alpha=unit_alpha, gate_c=gate_c,
                                 unit_c=unit_c, clip_output=clip_output,
                                 gate_clip_output=gate_clip_output,
                                 unit_clip_output=unit_clip_output)
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
        self.register_load_state_dict_post_hook(allow_missing_noise_keys)

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

    @property
    def _flat_weights_names(self) -> list[str]:
        """The weight names in ``nn.LSTM``/``nn.GRU``'s order (code that reads them works)."""
        kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else (
            "weight_ih", "weight_hh")
        return [f"{k}_l{layer}{sfx}" for layer in range(self.num_layers)
                for sfx in self._suffixes() for k in kinds]

    @property
    def _flat_weights(self) -> list[Tensor]:
        """The weights of :attr:`_flat_weights_names`, read as attributes (parametrized ones
        included)."""
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Per layer and direction, ``[weight_ih, weight_hh, bias_ih, bias_hh]``, as
        ``nn.LSTM.all_weights``."""
        per = 4 if self.bias else 2
        flat = self._flat_weights
        return [flat[i: i + per] for i in range(0, len(flat), per)]

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
        def g(name: str) -> Tensor:  # normal attribute access: parametrizations apply
            return getattr(self, name)

        b_ih = g(f"bias_ih_l{layer}{sfx}") if self.bias else None
        b_hh = g(f"bias_hh_l{layer}{sfx}") if self.bias else None
        return g(f"weight_ih_l{layer}{sfx}"), g(f"weight_hh_l{layer}{sfx}"), b_ih, b_hh

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
    @_compiler_disable_lazily
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
        gate_clip_output: overrides ``clip_output`` for the gates.
        unit_clip_output: overrides ``clip_output`` for the tanh units.

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

    def forward(self, input: Tensor | PackedSequence,
                hx: tuple[Tensor, Tensor] | None = None):
        if hx is not None and not (isinstance(hx, tuple | list) and len(hx) == 2):
            got = "a Tensor" if isinstance(hx, Tensor) else type(hx).__name__
            raise ValueError(f"hx of an LSTM must be a tuple (h_0, c_0), as for nn.LSTM, got {got}")
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
        fused = fused_lstm_layer(acts, xp, (h0, c0), w_hh, mask, training=self.training,
                                 generator=self.generator)
        if fused is not None:
            return fused
        h, c = h0, c0
        outs = []
        for t in range(x.shape[0]):
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

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None):
        out, (h_n,) = self._run(input, [hx])
        return out, h_n

    def _layer(self, x: Tensor, state: list[Tensor], layer: int, sfx: str,
               mask: Tensor | None) -> tuple[Tensor, Tensor]:
        w_ih, w_hh, b_ih, b_hh = self._layer_weights(layer, sfx)
        acts = getattr(self, f"noise_l{layer}{sfx}")
        gi = nn.functional.linear(x, w_ih, b_ih)
        (h0,) = state
        b = b_hh if b_hh is not None else gi.new_zeros(3 * self.hidden_size)
        fused = fused_gru_layer(acts, gi, h0, (w_hh, b), mask, training=self.training,
                                generator=self.generator)
        if fused is not None:
            return fused
        h = h0
        outs = []
        for t in range(x.shape[0]):
            new = gru_step(acts, gi[t], nn.functional.linear(h, w_hh, b_hh), h)
            (h,), out = _advance(_step_mask(mask, t), (new,), (h,))
            outs.append(out)
        return torch.stack(outs), h



def from_torch(module: nn.LSTM | nn.GRU | nn.LSTMCell | nn.GRUCell,
               **kwargs: Any) -> nn.Module:
    """The noisy counterpart of a torch recurrent module, with its weights (for ``noisify``)."""
    p = next(module.parameters())
    factory = {"device": p.device, "dtype": p.dtype}
    from .cells import NoisyGRUCell, NoisyLSTMCell

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

