"""noisyact: Noisy Activation Functions (Gulcehre, Moczulski, Denil, Bengio, ICML 2016) for PyTorch.

Quick start::

    import torch, noisyact
    act = noisyact.NoisyHardTanh(variant="NAH")      # Eq. 12 with half-normal noise
    y = act(torch.randn(4, 8))                       # training: noisy where saturated
    act.eval(); y = act(torch.randn(4, 8))           # eval: exact expectation (Eq. 13)
"""

from . import functional, saturating
from .anneal import Constant, Cosine, Exponential, InverseSqrt, Linear, NoiseAnnealer
from .compiler import compile_after, compile_after_chosen, set_compile_after
from .convert import NoisifyReport, noise_parameters, noisify, param_groups, register_converter
from .fused import fused_mode, set_fused_mode
from .modules import (
    HardSigmoid,
    LazyNoisyHardSigmoid,
    LazyNoisyHardTanh,
    LazyNoisySigmoid,
    LazyNoisyTanh,
    LazyNoisyTorchHardsigmoid,
    NoisyActivation,
    NoisyHardSigmoid,
    NoisyHardswish,
    NoisyHardTanh,
    NoisySigmoid,
    NoisyTanh,
    NoisyTorchHardsigmoid,
    make_saturating,
)
from .monitor import NoiseMonitor, NoiseTracker, UnitStats, monitor
from .noise import noise_source, set_noise_source
from .registry import create_act_layer, get_act_layer, list_act_layers
from .rnn import NoisyGRU, NoisyGRUCell, NoisyLSTM, NoisyLSTMCell
from .saturating import Saturating

__version__ = "0.1.0"

__all__ = [
    "Constant",
    "Cosine",
    "Exponential",
    "HardSigmoid",
    "InverseSqrt",
    "LazyNoisyHardSigmoid",
    "LazyNoisyHardTanh",
    "LazyNoisySigmoid",
    "LazyNoisyTanh",
    "LazyNoisyTorchHardsigmoid",
    "Linear",
    "NoiseAnnealer",
    "NoiseMonitor",
    "NoiseTracker",
    "NoisifyReport",
    "NoisyActivation",
    "NoisyGRU",
    "NoisyGRUCell",
    "NoisyHardSigmoid",
    "NoisyHardTanh",
    "NoisyHardswish",
    "NoisyLSTM",
    "NoisyLSTMCell",
    "NoisySigmoid",
    "NoisyTanh",
    "NoisyTorchHardsigmoid",
    "Saturating",
    "UnitStats",
    "__version__",
    "compile_after",
    "compile_after_chosen",
    "create_act_layer",
    "functional",
    "fused_mode",
    "get_act_layer",
    "list_act_layers",
    "make_saturating",
    "monitor",
    "noise_parameters",
    "noise_source",
    "noisify",
    "param_groups",
    "register_converter",
    "saturating",
    "set_compile_after",
    "set_fused_mode",
    "set_noise_source",
]
