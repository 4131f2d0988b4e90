"""The GPU check: the correctness tests that matter, on a CUDA device (skipped without one).

Run on a machine with a GPU::

    python -m pytest -q -m cuda tests/test_cuda.py
    python benchmarks/activation.py --device cuda && python benchmarks/rnn.py --device cuda

The kernels compile through Triton there, and the counter-based generator's integer arithmetic
(wrap-around, shifts) must give the same numbers as on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

import noisyact
from noisyact import functional as F
from noisyact.noise import draw_keys, noise_block, normal_like
from noisyact.saturating import HARD_SIGMOID, HARD_TANH

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")


def _key(a, b, device):
    return torch.tensor([a, b], dtype=torch.int32, device=device)


@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_counter_noise_is_the_same_numbers_on_cpu_and_cuda(mode):
    shape = (257, 1031)
    want = normal_like(shape, _key(12345, -777, "cpu"))
    fn = normal_like if mode == "eager" else torch.compile(normal_like, fullgraph=True)
    got = fn(shape, _key(12345, -777, CUDA)).cpu()
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    block = noise_block(torch.empty(9, 5, 33, device=CUDA), _key(7, 8, CUDA)).cpu()
    torch.testing.assert_close(block, noise_block(torch.empty(9, 5, 33), _key(7, 8, "cpu")),
                               rtol=0, atol=2e-5)


def test_counter_noise_statistics_on_cuda():
    z = normal_like((1 << 22,), _key(3, -9, CUDA)).double()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    s = torch.sort(z).values
    cdf = 0.5 * (1 + torch.erf(s / math.sqrt(2)))
    grid = torch.arange(1, n + 1, device=CUDA, dtype=torch.float64) / n
    assert (cdf - grid).abs().max().item() < 1.63 / math.sqrt(n)  # KS at the 1 % level
    assert abs(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1].item()) < 5 / math.sqrt(n)


@pytest.mark.parametrize("mode", ["eager", "compile"])
@pytest.mark.parametrize("variant", ["NAN", "NAH", "NANI", "NANIL", "NANIS"])
@pytest.mark.parametrize("fn", [HARD_TANH, HARD_SIGMOID])
def test_fused_equals_reference_with_the_same_noise(mode, variant, fn):
    noisyact.set_fused_mode(mode)
    x = torch.randn(64, 300, device=CUDA) * 3
    p = torch.rand(300, device=CUDA) * 2 - 1
    g = torch.randn(64, 300, device=CUDA)
    xx, pp = x.clone().requires_grad_(), p.clone().requires_grad_()
    y = F.noisy_activation(xx, pp, fn=fn, variant=variant, training=True, dim=-1,
                           generator=torch.Generator(CUDA).manual_seed(8))
    y.backward(g)
    key = draw_keys(1, torch.Generator(CUDA).manual_seed(8), CUDA)[0]
    xi = normal_like(x.shape, key)
    noisyact.set_fused_mode("off")
    xr, pr = x.clone().requires_grad_(), p.clone().requires_grad_()
    yr = F.noisy_activation(xr, pr, fn=fn, variant=variant, training=True, dim=-1, noise=xi)
    yr.backward(g)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(xx.grad, xr.grad)
    if pp.grad is not None or pr.grad is not None:
        torch.testing.assert_close(pp.grad, pr.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["NAN", "NAH", "NANIL"])
def test_gradcheck_float64_on_cuda(variant):
    torch.manual_seed(2)
    mag = torch.where(torch.rand(5, 7) < 0.5, torch.rand(5, 7) * 0.5, 1.5 + torch.rand(5, 7) * 2.5)
    x = (mag * torch.where(torch.rand(5, 7) < 0.5, -1.0, 1.0)).double().to(CUDA)
    x.requires_grad_()
    p = (torch.rand(7, dtype=torch.float64) * 2 - 1).to(CUDA).requires_grad_()

    def f(x, p):
        return F.noisy_activation(x, p, fn=HARD_TANH, variant=variant, alpha=0.9, c=0.3,
                                  training=True, dim=-1,
                                  generator=torch.Generator(CUDA).manual_seed(6))

    assert torch.autograd.gradcheck(f, (x, p))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_recurrent_layers_equal_the_plain_loop_on_cuda(kind, mode):
    """Forward and hand-written backward of the fused layer on CUDA = autograd through the
    equations with the ξ the layer drew (its key, the counter noise of the whole sequence)."""
    from test_rnn import assert_layer_equals_reference

    noisyact.set_fused_mode(mode)
    torch.manual_seed(0)
    T, B, I, H = 6, 3, 4, 5
    cls = noisyact.NoisyLSTM if kind == "LSTM" else noisyact.NoisyGRU
    m = cls(I, H, variant="NAH", gate_c=1.5, unit_c=1.5,
            generator=torch.Generator(CUDA).manual_seed(9)).double().to(CUDA)
    x = (torch.randn(T, B, I, dtype=torch.float64, device=CUDA) * 3).requires_grad_()
    y = m(x)[0]
    gy = torch.randn_like(y)
    y.backward(gy)
    key = draw_keys(1, torch.Generator(CUDA).manual_seed(9), CUDA)[0]
    units = (5 if kind == "LSTM" else 3) * H
    noise = noise_block(torch.empty(T, B, units, device=CUDA), key).double()
    assert_layer_equals_reference(m, x, gy, y, noise, kind, "NAH", 1.5)


@pytest.mark.parametrize("cls", [noisyact.NoisyLSTM, noisyact.NoisyGRU])
def test_train_eval_switch_and_bf16_on_cuda(cls):
    noisyact.set_fused_mode("compile")
    torch.manual_seed(0)
    m = cls(16, 32, variant="NAH").to(CUDA)
    x = torch.randn(10, 4, 16, device=CUDA) * 2
    a, b = m(x)[0], m(x)[0]
    assert not torch.equal(a, b)  # fresh noise per call in training
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])  # eval: deterministic
    ref = m(x)[0]
    half = m.to(torch.bfloat16)(x.to(torch.bfloat16))[0]
    torch.testing.assert_close(half.float(), ref, rtol=0.05, atol=0.05)
    m.train()
    y = m(x.to(torch.bfloat16).requires_grad_())[0]
    y.float().sum().backward()
    assert all(torch.isfinite(q.grad).all() for q in m.parameters() if q.grad is not None)
