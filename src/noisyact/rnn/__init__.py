r"""Noisy LSTM and GRU layers and cells, drop-in for ``nn.LSTM``/``nn.GRU``/``nn.LSTMCell``/
``nn.GRUCell`` (paper §6.2-6.6).

LSTM (gate order i, f, g, o as in ``nn.LSTM``)::

    i, f, o = gate(W_i x + b_i + U_i h),  ...         noisy hard-sigmoid, p of shape (3H,)
    g       = cand(W_g x + b_g + U_g h)               noisy hard-tanh, p of shape (H,)
    c'      = f * c + i * g
    h'      = o * cell(c')                            noisy hard-tanh, p of shape (H,)

GRU (gate order r, z, n as in ``nn.GRU``)::

    r, z = gate(W_{r,z} x + b_i + U_{r,z} h + b_h)    noisy hard-sigmoid, p of shape (2H,)
    n    = cand(W_n x + b_in + r * (U_n h + b_hn))    noisy hard-tanh, p of shape (H,)
    h'   = (1 - z) * n + z * h

The package, in reading order:

* :mod:`.reference`: the equations above as one step through the activation modules
  (:func:`lstm_step`, :func:`gru_step`) and the units of a layer (:class:`RecurrentUnits`,
  built from the variant settings);
* :mod:`.modules`: :class:`NoisyLSTM`, :class:`NoisyGRU`, :func:`from_torch`;
  :mod:`.cells`: :class:`NoisyLSTMCell`, :class:`NoisyGRUCell`;
* the private fused backend, one file per layer (:mod:`._fused_lstm`, :mod:`._fused_gru`, with
  :mod:`._fused_common`): per-step kernels and the autograd Function over a sequence, entered
  through one function per layer (``fused_lstm_layer``, ``fused_gru_layer``).

Speed. cuDNN and oneDNN fuse only the soft activations, so a noisy layer runs its own recurrence:
the input projections of all time steps are one matrix product, then each step is one call of a
compiled function (:mod:`noisyact.compiler`: traced once with symbolic sizes, called without
``torch.compile``'s guards and wrappers) holding the recurrent matrix product and one pass over
all units of the layer and the state update. The noise ξ of the whole sequence is drawn by one
call (counter noise from one key, :func:`noisyact.noise.noise_block`). When autograd will ask for
gradients, each forward step also returns its *backward coefficients* (every unit's value and
derivatives, combined into 11H numbers per position for the LSTM, 8H for the GRU, in the compute
dtype: ``LSTMCoeffs``/``GRUCoeffs``), so the hand-written backward step, one compiled call per
step, is a few products: it neither redraws ξ nor evaluates a unit again. The recurrent weight
gradient is one matrix product at the end, the p gradient one sum over an accumulator. This fast
path covers the hard units of every variant and without noise (``"hard"``); ``"soft"`` (the
exact sigmoid/tanh of ``nn.LSTM``) runs a plain per-step loop through the modules. The fused
backward gives first derivatives only: ``create_graph=True`` is refused, naming ``set_fused_mode("off")``.
"""

from .cells import NoisyGRUCell, NoisyLSTMCell
from .modules import NoisyGRU, NoisyLSTM, from_torch
from .reference import (
    KINDS,
    GRUActivations,
    LSTMActivations,
    RecurrentUnits,
    UnitConfig,
    gru_step,
    lstm_step,
)

__all__ = ["KINDS", "GRUActivations", "LSTMActivations", "NoisyGRU", "NoisyGRUCell", "NoisyLSTM",
           "NoisyLSTMCell", "RecurrentUnits", "UnitConfig", "from_torch", "gru_step", "lstm_step"]
