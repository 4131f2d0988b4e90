"""Counter-based noise: distribution, independence, reproducibility, and that the fused kernels
use exactly it."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import noisyact
from noisyact import functional as F
from noisyact.noise import counter_normal, draw_keys, normal_like
from noisyact.saturating import HARD_TANH

N = 1 << 20


def _key(a, b):
    return torch.tensor([a, b], dtype=torch.int32)


def _normal_cdf(z):
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


@pytest.fixture(scope="module")
def sample():
    return normal_like((N,), _key(12345, -777)).double()


def test_moments_are_those_of_a_standard_normal(sample):
    se = 1.0 / math.sqrt(N)
    assert abs(sample.mean()) < 5 * se
    assert abs(sample.var() - 1.0) < 5 * math.sqrt(2.0) * se
    assert abs((sample**3).mean()) < 5 * math.sqrt(15.0) * se  # skewness
    assert abs((sample**4).mean() - 3.0) < 5 * math.sqrt(96.0) * se  # kurtosis


def test_kolmogorov_smirnov_against_the_normal_cdf(sample):
    z, _ = sample.sort()
    cdf = _normal_cdf(z)
    i = torch.arange(1, N + 1, dtype=torch.float64)
    d = torch.maximum(i / N - cdf, cdf - (i - 1) / N).max()
    assert d < 1.95 / math.sqrt(N)  # rejects at the 0.1 % level


def test_tail_frequencies(sample):
    for t in (1.0, 2.0, 3.0):
        expected = 2 * (1 - _normal_cdf(torch.tensor(t, dtype=torch.float64)))
        got = (sample.abs() > t).double().mean()
        assert abs(got - expected) < 5 * math.sqrt(expected * (1 - expected) / N)
    assert sample.abs().max() <= math.sqrt(50 * math.log(2)) + 1e-6


@pytest.mark.parametrize("lag", [1, 2, 3, 64])
def test_no_correlation_between_neighbours(sample, lag):
    """Lag 1 includes the Box-Muller partners (r cos θ, r sin θ); squares catch a shared radius."""
    a, b = sample[:-lag], sample[lag:]
    se = 1.0 / math.sqrt(N)
    assert abs((a * b).mean()) < 5 * se
    assert abs(np.corrcoef(a.numpy() ** 2, b.numpy() ** 2)[0, 1]) < 5 * se


@pytest.mark.parametrize("other", [(12346, -777), (12345, -776), (-12345, 777)])
def test_keys_give_independent_streams(sample, other):
    """Keys one bit apart (and unrelated ones) give uncorrelated noise, also after a shift."""
    z = normal_like((N,), _key(*other)).double()
    se = 1.0 / math.sqrt(N)
    assert abs((z * sample).mean()) < 5 * se
    assert abs((z[1:] * sample[:-1]).mean()) < 5 * se


def test_uniform_bits_are_balanced():
    """Each of the 24 bits a word keeps is 1 half of the time (a biased hash shows here)."""
    from noisyact.noise import _word

    w = _word(torch.arange(N, dtype=torch.int32), _key(7, 9)).to(torch.int64)
    bits = torch.stack([(w >> b) & 1 for b in range(24)]).double().mean(1)
    assert (bits - 0.5).abs().max() < 5 * 0.5 / math.sqrt(N)


@settings(max_examples=20, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1),
       st.integers(0, 2**31 - 2))
def test_pointwise_and_finite_for_any_key_and_counter(k0, k1, c):
    """Each element depends on its counter only (not on the tensor around it), is finite."""
    key = _key(k0, k1)
    counters = torch.tensor([c, c ^ 1, 0, 2**31 - 1], dtype=torch.int32)
    z = counter_normal(counters, key)
    assert torch.isfinite(z).all()
    assert torch.equal(counter_normal(counters[:1], key), z[:1])


def test_shape_counters_are_row_major():
    key = _key(3, 4)
    flat = normal_like((24,), key)
    torch.testing.assert_close(normal_like((2, 3, 4), key), flat.view(2, 3, 4), rtol=0, atol=0)


def test_keys_reproducible_from_manual_seed_and_generator():
    torch.manual_seed(3)
    a = draw_keys(4, None, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(a, draw_keys(4, None, torch.device("cpu")))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(draw_keys(2, g1, torch.device("cpu")), draw_keys(2, g2, torch.device("cpu")))
    assert a.dtype == torch.int32 and a.shape == (4, 2)


def test_set_noise_source_rejects_unknown_names():
    with pytest.raises(ValueError, match="source"):
        noisyact.set_noise_source("numpy")


@pytest.mark.parametrize("mode", ["eager", "compile"])
@pytest.mark.parametrize("variant", ["NAH", "NANIL"])
def test_fused_kernels_use_exactly_the_counter_noise(mode, variant):
    """Fused output and gradients = the reference path given ξ = normal_like(shape, key), with
    the key the fused path draws from the same generator state."""
    noisyact.set_fused_mode(mode)
    x = torch.randn(6, 40) * 3
    p = torch.rand(40) * 2 - 1
    g = torch.randn(6, 40)
    xx, pp = x.clone().requires_grad_(), p.clone().requires_grad_()
    y = F.noisy_activation(xx, pp, fn=HARD_TANH, variant=variant, training=True, dim=-1,
                           generator=torch.Generator().manual_seed(8))
    y.backward(g)
    key = draw_keys(1, torch.Generator().manual_seed(8), x.device)[0]
    xi = normal_like(x.shape, key)
    noisyact.set_fused_mode("off")
    xr, pr = x.clone().requires_grad_(), p.clone().requires_grad_()
    yr = F.noisy_activation(xr, pr, fn=HARD_TANH, variant=variant, training=True, dim=-1,
                            noise=xi)
    yr.backward(g)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(xx.grad, xr.grad)
    torch.testing.assert_close(pp.grad, pr.grad)


def test_compiled_noise_equals_eager_noise():
    key = _key(-5, 11)
    compiled = torch.compile(normal_like, dynamic=False, fullgraph=True)
    torch.testing.assert_close(compiled((64, 1000), key), normal_like((64, 1000), key),
                               rtol=0, atol=2e-5)


def test_torch_source_matches_the_reference_path_for_the_same_seed():
    noisyact.set_noise_source("torch")
    x = torch.randn(1000) * 3
    p = torch.tensor([0.8])
    outs = []
    for mode in ("off", "eager"):
        noisyact.set_fused_mode(mode)
        torch.manual_seed(11)
        outs.append(F.noisy_hard_tanh(x, p, variant="NAH", training=True))
    torch.testing.assert_close(outs[0], outs[1])


def test_kernel_noise_is_fresh_per_call_and_seeded():
    x = torch.full((2000,), 5.0)  # saturated everywhere: the output is all noise
    p = torch.tensor([1.0])
    torch.manual_seed(0)
    a = F.noisy_hard_tanh(x, p, variant="NAN", training=True)
    b = F.noisy_hard_tanh(x, p, variant="NAN", training=True)
    torch.manual_seed(0)
    assert torch.equal(F.noisy_hard_tanh(x, p, variant="NAN", training=True), a)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("variant", ["NAN", "NAH", "NANIL"])
def test_gradcheck_with_noise_regenerated_in_backward(variant):
    """float64 gradcheck through the counter-noise path: the backward kernel must regenerate
    exactly the forward's ξ (a fresh generator per call keeps the function deterministic)."""
    torch.manual_seed(2)
    # |x| <= 0.5 or 1.5 <= |x| <= 4: with c = 0.3, σ <= c/4 and |ξ| <= 5.9 keep x + σξ (NANIL)
    # at least 0.06 from the kinks at ±1, far beyond gradcheck's step
    mag = torch.where(torch.rand(5, 7) < 0.5, torch.rand(5, 7) * 0.5, 1.5 + torch.rand(5, 7) * 2.5)
    x = (mag * torch.where(torch.rand(5, 7) < 0.5, -1.0, 1.0)).double().requires_grad_()
    p = (torch.rand(7, dtype=torch.float64) * 2 - 1).requires_grad_()

    def f(x, p):
        return F.noisy_activation(x, p, fn=HARD_TANH, variant=variant, alpha=0.9, c=0.3,
                                  training=True, dim=-1,
                                  generator=torch.Generator().manual_seed(6))

    assert torch.autograd.gradcheck(f, (x, p))


@pytest.mark.parametrize("shape", [(7, 3, 5), (4,), (1, 1), (0, 3), (2, 1001)])
def test_noise_block_is_normal_like_computed_pairwise(shape):
    """The recurrent layers' block noise: the same values as normal_like (so the statistical
    tests above cover it), eager and compiled, odd sizes included."""
    from noisyact.noise import noise_block

    key = _key(31, -4)
    want = normal_like(shape, key)
    got = noise_block(torch.empty(shape), key)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    if got.numel():
        compiled = torch.compile(noise_block, dynamic=True, fullgraph=True)
        torch.testing.assert_close(compiled(torch.empty(shape), key), want, rtol=0, atol=2e-5)
