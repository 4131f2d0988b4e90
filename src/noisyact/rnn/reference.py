r"""The reference LSTM and GRU steps: the equations, through the activation modules.

Read these first: they are ``nn.LSTMCell``/``nn.GRUCell`` with every sigmoid replaced by the
layer's ``gate`` unit (a noisy hard-sigmoid) and every tanh by a noisy hard-tanh. The fused
backend (:mod:`._fused_lstm`, :mod:`._fused_gru`) computes exactly these steps faster; it is
tested against them. They run the ``soft`` units, the cells, a model compiled with
``torch.compile`` and everything when the fast path is off (``set_fused_mode("off")``).

The units of one layer and direction (:class:`RecurrentUnits`) are built from a
:class:`UnitConfig`: the kind of the gates and of the tanh units (a variant of
:mod:`noisyact.variants`, ``"hard"`` or ``"soft"``), their α, c and ``clip_output``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..modules import HardSigmoid, NoisyHardSigmoid, NoisyHardTanh
from ..variants import VARIANTS

__all__ = ["KINDS", "GRUActivations", "LSTMActivations", "RecurrentUnits", "UnitConfig",
           "allow_missing_noise_keys", "gru_step", "lstm_step"]

#: Unit kinds: the variants, "hard" (hard functions, no noise: Table 4's middle row) and
#: "soft" (exact sigmoid/tanh: the reference model).
KINDS = (*VARIANTS, "hard", "soft")


def check_kind(name: str, kind: str) -> str:
    """The canonical kind (variant names without regard to case), or a ``ValueError``."""
    if isinstance(kind, str):
        for k in KINDS:
            if k.upper() == kind.upper():
                return k
    raise ValueError(f"{name} must be one of {', '.join(KINDS)}; got {kind!r}")


@dataclass
class UnitSide:
    """The settings of one side (the gates, or the tanh units) of a recurrent layer."""

    kind: str
    alpha: float | None = None
    c: float | None = None
    clip: bool = False

    def make(self, gate: bool, n: int, generator: torch.Generator | None,
             factory: dict[str, Any]) -> nn.Module:
        if self.kind == "soft":
            return nn.Sigmoid() if gate else nn.Tanh()
        if self.kind == "hard":
            return HardSigmoid() if gate else nn.Hardtanh()
        cls = NoisyHardSigmoid if gate else NoisyHardTanh
        return cls(self.kind, alpha=self.alpha, c=self.c, num_parameters=n, dim=-1,
                   generator=generator, clip_output=self.clip, **factory)


class UnitConfig:
    """Gate and unit settings shared by layers and cells (the keyword arguments of
    :class:`~noisyact.NoisyLSTM`; ``gate_*``/``unit_*`` override ``variant``/``clip_output``)."""

    def __init__(self, variant: str, **kw: Any) -> None:
        clip = kw.get("clip_output", False)

        def side(prefix: str) -> UnitSide:
            own_clip = kw.get(f"{prefix}_clip_output")
            return UnitSide(check_kind(f"{prefix}_variant", kw.get(f"{prefix}_variant") or variant),
                            kw.get(f"{prefix}_alpha"), kw.get(f"{prefix}_c"),
                            clip if own_clip is None else own_clip)

        self.gates, self.units = side("gate"), side("unit")

    # read by extra_repr and by users of the old attribute names
    @property
    def gate(self) -> str:
        return self.gates.kind

    @property
    def unit(self) -> str:
        return self.units.kind

    def make(self, gate: bool, n: int, generator: torch.Generator | None,
             factory: dict[str, Any]) -> nn.Module:
        return (self.gates if gate else self.units).make(gate, n, generator, factory)


class RecurrentUnits(nn.Module):
    """The noisy units of one recurrent layer and direction: ``gate`` (all sigmoid gates
    side by side, p of shape (n_gates·H,)) and one hard-tanh unit per name in ``tanh_units``."""

    def __init__(self, hidden_size: int, n_gates: int, tanh_units: tuple[str, ...],
                 cfg: UnitConfig, generator: torch.Generator | None,
                 factory: dict[str, Any]) -> None:
        super().__init__()
        self.gate = cfg.make(True, n_gates * hidden_size, generator, factory)
        for name in tanh_units:
            self.add_module(name, cfg.make(False, hidden_size, generator, factory))


def LSTMActivations(hidden_size: int, cfg: UnitConfig, generator: torch.Generator | None,
                    factory: dict[str, Any]) -> RecurrentUnits:
    """LSTM units: gates (i, f, o), candidate ``cand`` and cell output ``cell``."""
    return RecurrentUnits(hidden_size, 3, ("cand", "cell"), cfg, generator, factory)


def GRUActivations(hidden_size: int, cfg: UnitConfig, generator: torch.Generator | None,
                   factory: dict[str, Any]) -> RecurrentUnits:
    """GRU units: gates (r, z) and candidate ``cand``."""
    return RecurrentUnits(hidden_size, 2, ("cand",), cfg, generator, factory)


def lstm_step(acts: RecurrentUnits, pre: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step from the pre-activations ``pre = W x + b + U h`` (gate order i, f, g, o)::

        i, f, o = gate(pre_i, pre_f, pre_o)       noisy hard-sigmoid
        c'      = f * c + i * cand(pre_g)         noisy hard-tanh
        h'      = o * cell(c')                    noisy hard-tanh
    """
    i, f, g, o = pre.chunk(4, -1)
    i, f, o = acts.gate(torch.cat([i, f, o], -1)).chunk(3, -1)
    c = f * c_prev + i * acts.cand(g)
    return o * acts.cell(c), c


def gru_step(acts: RecurrentUnits, gi: Tensor, gh: Tensor, h_prev: Tensor) -> Tensor:
    """One GRU step from ``gi = W x + b_i`` and ``gh = U h + b_h`` (gate order r, z, n)::

        r, z = gate(gi_r + gh_r, gi_z + gh_z)     noisy hard-sigmoid
        n    = cand(gi_n + r * gh_n)              noisy hard-tanh
        h'   = (1 - z) * n + z * h
    """
    ir, iz, in_ = gi.chunk(3, -1)
    hr, hz, hn = gh.chunk(3, -1)
    r, z = acts.gate(torch.cat([ir + hr, iz + hz], -1)).chunk(2, -1)
    n = acts.cand(in_ + r * hn)
    return (1.0 - z) * n + z * h_prev


def allow_missing_noise_keys(module: nn.Module, incompatible: Any) -> None:
    """A load-state-dict post hook of the noisy layers and cells: an ``nn.LSTM``/``nn.GRU`` (or
    cell) state dict loads strictly, only the noise parameters (``noise_l*``) may be missing."""
    missing = incompatible.missing_keys
    missing[:] = [k for k in missing if not any(part.startswith("noise_l")
                                                for part in k.split("."))]
