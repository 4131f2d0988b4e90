"""Issue 34: numerics that do not depend on the path, and overflow that is refused, not NaN.

``path`` (conftest) runs each test on the reference path and on the fused path in the run's mode
(eager by default, compiled in CI's compiled run).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import noisyact

INF = float("inf")


@pytest.mark.parametrize("training", [True, False])
def test_a_hard_lstm_with_an_infinite_input_is_finite_as_nn_lstm(path, training):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 5)
    x[1, 0, 2] = INF
    ref = nn.LSTM(5, 6)
    assert torch.isfinite(ref(x)[0]).all()
    lstm = noisyact.NoisyLSTM(5, 6, variant="hard").train(training)
    with torch.no_grad():
        out, (h, c) = lstm(x)
    assert torch.isfinite(out).all() and torch.isfinite(h).all() and torch.isfinite(c).all()
    noisyact.set_fused_mode("off")
    with torch.no_grad():
        torch.testing.assert_close(lstm(x)[0], out)  # the two paths agree on it


@pytest.mark.parametrize("variant", ["NAN", "NAH"])
@pytest.mark.parametrize("act", [noisyact.NoisyHardTanh, noisyact.NoisyHardSigmoid])
def test_alpha_one_saturates_at_infinity(path, variant, act):
    unit = act(variant=variant, alpha=1.0)
    x = torch.tensor([INF, -INF, 0.25])
    lo, hi = (-1.0, 1.0) if act is noisyact.NoisyHardTanh else (0.0, 1.0)
    with torch.no_grad():
        for training in (True, False):
            y = unit.train(training)(x)
            assert torch.isfinite(y).all(), (training, y)
    # eval: h(±∞) moved by the expectation of the noise only (0 for NAN)
    y = unit.eval()(x)
    if variant == "NAN":
        assert y[0].item() == hi and y[1].item() == lo


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_c_that_overflows_the_compute_dtype_is_refused(path, dtype):
    unit = noisyact.NoisyHardTanh(variant="NAH", c=1e39).train()
    with pytest.raises(ValueError, match=r"c = 1e\+39 overflows torch.float32"):
        unit(torch.zeros(2, dtype=dtype))
    with pytest.raises(ValueError, match=r"alpha = 1e\+39 overflows"):
        noisyact.functional.noisy_hard_tanh(torch.zeros(2, dtype=dtype), torch.zeros(1),
                                            variant="NAN", alpha=1e39, training=True)


@pytest.mark.parametrize("layer", [noisyact.NoisyLSTM, noisyact.NoisyGRU])
def test_a_recurrent_layer_refuses_a_c_that_overflows(path, layer):
    rnn = layer(3, 4, variant="NAH", unit_c=1e39).train()
    with pytest.raises(ValueError, match=r"c = 1e\+39 overflows torch.float32"):
        rnn(torch.zeros(2, 1, 3))
    assert torch.isfinite(rnn.double()(torch.zeros(2, 1, 3, dtype=torch.float64))[0]).all()


def test_a_large_c_is_fine_in_float64(path):
    unit = noisyact.NoisyHardTanh(variant="NAH", c=1e39).double().train()
    assert torch.equal(unit(torch.zeros(2, dtype=torch.float64)), torch.zeros(2, dtype=torch.float64))


def _second_derivative(module, x):
    y = module(x)
    y = y[0] if isinstance(y, tuple) else y  # a recurrent layer's output
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    return torch.autograd.grad(g.sum(), x, allow_unused=True)[0]


@pytest.mark.parametrize("make", [
    lambda: noisyact.NoisyHardTanh(variant="NAH"),
    lambda: noisyact.NoisyLSTM(3, 4, variant="NAH"),
    lambda: noisyact.NoisyGRU(3, 4, variant="NAN"),
], ids=["activation", "lstm", "gru"])
def test_double_backward_is_the_reference_or_a_clear_error(path, make):
    torch.manual_seed(0)
    module = make().train()
    x = (3 * torch.randn(5, 2, 3)).requires_grad_()
    if path == "off":
        assert _second_derivative(module, x) is not None  # the reference path has it
        return
    with pytest.raises(RuntimeError, match=r'set_fused_mode\("off"\)'):
        _second_derivative(module, x)
    noisyact.set_fused_mode("off")  # the way out it names
    assert _second_derivative(module, x) is not None
