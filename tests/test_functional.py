"""The equations against the independent NumPy reference, gradients, noise statistics, edge cases."""

import math

import numpy as np
import pytest
import reference as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from noisyact import functional as F
from noisyact.saturating import HARD_SIGMOID, HARD_TANH, SIGMOID, TANH

FNS = {"hard_tanh": HARD_TANH, "hard_sigmoid": HARD_SIGMOID, "tanh": TANH, "sigmoid": SIGMOID}
VARIANTS = ["NAN", "NAH", "NANI", "NANIL", "NANIS"]
CASES = [(f, v) for f in FNS for v in VARIANTS if not (v == "NANIS" and FNS[f].threshold is None)]


def _x(n=401, lo=-5.0, hi=5.0):
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.cat([x, torch.tensor([0.0, 1.0, -1.0, 2.0, -2.0], dtype=torch.float64)])


@pytest.mark.parametrize("fn,variant", CASES)
@pytest.mark.parametrize("alpha", [0.9, 1.0, 1.15])
def test_training_output_matches_reference(path, fn, variant, alpha):
    x = _x()
    xi = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = torch.tensor([0.7], dtype=torch.float64)
    out = F.noisy_activation(x, p, fn=FNS[fn], variant=variant, alpha=alpha, c=0.8,
                             training=True, noise=xi, dim=0)
    want = ref.phi(x.numpy(), xi.numpy(), 0.7, fn=fn, variant=variant, alpha=alpha, c=0.8)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn,variant", CASES)
@pytest.mark.parametrize("alpha", [0.9, 1.0, 1.15])
def test_eval_output_matches_reference(fn, variant, alpha):
    x = _x()
    p = torch.tensor([-0.4], dtype=torch.float64)
    out = F.noisy_activation(x, p, fn=FNS[fn], variant=variant, alpha=alpha, c=0.8,
                             training=False, dim=0)
    want = ref.expectation(x.numpy(), -0.4, fn=fn, variant=variant, alpha=alpha, c=0.8)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, atol=1e-12)


def test_hard_sigmoid_is_the_papers_not_torchs():
    x = torch.tensor([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 2.5, 3.0])
    ours = HARD_SIGMOID.h(x)
    np.testing.assert_allclose(ours.numpy(), np.clip(0.25 * x.numpy() + 0.5, 0, 1))
    assert ours[6] == 1.0  # saturated at x = 2.5 ...
    assert torch.nn.functional.hardsigmoid(x)[6] < 1.0  # ... where x/6 + 1/2 is not


def test_direction_uses_sgn0_equal_1():
    x = torch.tensor([-1.0, 0.0, 1.0])
    assert F.noise_direction(x, 1.0).tolist() == [1.0, -1.0, -1.0]  # α = 1: d = −sgn(x)
    assert F.noise_direction(x, 1.2).tolist() == [-1.0, 1.0, 1.0]  # α > 1 flips it
    assert F.noise_direction(x, 0.8).tolist() == [1.0, -1.0, -1.0]


@pytest.mark.parametrize("fn", ["hard_tanh", "hard_sigmoid"])
@pytest.mark.parametrize("variant", ["NAN", "NAH", "NANIL", "NANIS"])
def test_no_noise_in_linear_regime(path, fn, variant):
    f = FNS[fn]
    x = torch.linspace(-0.999 * f.threshold, 0.999 * f.threshold, 1001)
    p = torch.tensor([0.9])
    for _ in range(3):
        out = F.noisy_activation(x, p, fn=f, variant=variant, alpha=1.0, c=5.0, training=True)
        torch.testing.assert_close(out, f.h(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fn", ["hard_tanh", "hard_sigmoid"])
@pytest.mark.parametrize("variant", ["NAN", "NAH"])
def test_saturated_gradient_is_nonzero(path, fn, variant):
    """The paper's point (Eq. 10): noise restores a gradient where h' = 0."""
    x = torch.full((1000,), 3.0 * FNS[fn].threshold, requires_grad=True)
    F.noisy_activation(x, torch.tensor([1.0]), fn=FNS[fn], variant=variant, alpha=1.0, c=1.0,
                       training=True).sum().backward()
    assert (x.grad.abs() > 0).float().mean() > 0.99
    x2 = x.detach().clone().requires_grad_()
    FNS[fn].h(x2).sum().backward()
    assert (x2.grad == 0).all()


@pytest.mark.parametrize("fn", ["hard_tanh", "hard_sigmoid", "tanh", "sigmoid"])
@pytest.mark.parametrize("variant", ["NAN", "NAH"])
@pytest.mark.parametrize("alpha", [0.9, 1.15])
def test_eval_is_monte_carlo_mean_of_training(path, fn, variant, alpha):
    x0 = torch.tensor([-4.0, -2.5, -1.5, -0.5, 0.0, 0.7, 1.3, 2.2, 3.0, 4.5], dtype=torch.float64)
    n = 40000
    x = x0.repeat(n, 1)
    p = torch.tensor([1.0], dtype=torch.float64)
    torch.manual_seed(0)
    train = F.noisy_activation(x, p, fn=FNS[fn], variant=variant, alpha=alpha, c=2.0,
                               training=True)
    test = F.noisy_activation(x0, p, fn=FNS[fn], variant=variant, alpha=alpha, c=2.0,
                              training=False, dim=0)
    sd = train.std(0)
    # 5 standard errors of the mean, and exact where there is no noise
    assert ((train.mean(0) - test).abs() <= 5 * sd / math.sqrt(n) + 1e-12).all()


@pytest.mark.parametrize("variant", ["NAN", "NAH"])
def test_noise_spread_and_direction(path, variant):
    x = torch.full((200000,), 2.5, dtype=torch.float64)
    p, c, alpha = 1.5, 3.0, 1.0
    torch.manual_seed(3)
    out = F.noisy_activation(x, torch.tensor([p], dtype=torch.float64), fn=HARD_TANH,
                             variant=variant, alpha=alpha, c=c, training=True)
    s = float(ref.sigma(np.array(2.5), p, c, "hard_tanh"))
    noise = out - 1.0  # h(2.5) = 1
    if variant == "NAN":
        assert abs(noise.std().item() - s) < 0.01 * s
        assert abs(noise.mean().item()) < 5 * s / math.sqrt(len(x))
    else:  # half-normal, pointed by d(x) = -1 (towards the linear regime)
        assert (noise <= 0).all()
        assert abs(noise.mean().item() + s * math.sqrt(2 / math.pi)) < 0.01 * s
        assert abs(noise.std().item() - s * math.sqrt(1 - 2 / math.pi)) < 0.01 * s


def test_input_noise_spread():
    x = torch.full((200000,), 0.0, dtype=torch.float64)
    torch.manual_seed(0)
    out = F.noisy_activation(x, None, fn=HARD_TANH, variant="NANI", c=0.05, training=True)
    assert abs(out.std().item() - 0.05) < 1e-3  # σ = c everywhere (NANI)


def test_c_zero_is_exactly_noise_free(path):
    x = _x().float()
    p = torch.tensor([0.3])
    for variant in VARIANTS:
        out = F.noisy_activation(x, p, fn=HARD_TANH, variant=variant, alpha=1.1, c=0.0,
                                 training=True)
        assert torch.isfinite(out).all()
        expect = F.noisy_activation(x, p, fn=HARD_TANH, variant=variant, alpha=1.1, c=0.0,
                                    training=False)
        if variant in ("NAN", "NAH"):
            # the noise term is exactly zero: same as the same path with ξ = 0
            zero = F.noisy_activation(x, p, fn=HARD_TANH, variant=variant, alpha=1.1, c=0.0,
                                      training=True, noise=torch.zeros_like(x))
            torch.testing.assert_close(out, zero, rtol=0, atol=0)
            torch.testing.assert_close(out, expect)
        else:
            torch.testing.assert_close(out, HARD_TANH.h(x), rtol=0, atol=0)


@pytest.mark.parametrize("fn,variant", CASES)
def test_gradcheck(path, fn, variant):
    torch.manual_seed(0)
    x = (torch.randn(3, 7, dtype=torch.float64) * 3).requires_grad_()
    p = (torch.rand(7, dtype=torch.float64) * 2 - 1).requires_grad_()
    xi = torch.randn(3, 7, dtype=torch.float64)
    # keep away from the kinks of h, where the derivative is not defined
    thr = FNS[fn].threshold or 10.0
    with torch.no_grad():
        x[(x.abs() - thr).abs() < 1e-2] += 0.1
        x[x.abs() < 1e-2] += 0.1

    def f(x, p):
        return F.noisy_activation(x, p, fn=FNS[fn], variant=variant, alpha=1.1, c=1.5,
                                  training=True, noise=xi, dim=1)

    assert torch.autograd.gradcheck(f, (x, p))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", ["NAN", "NAH", "NANIL"])
def test_half_precision(path, dtype, variant):
    x = torch.randn(64, 32) * 3
    xi = torch.randn(64, 32)
    p = torch.rand(32) * 2 - 1
    full = F.noisy_activation(x, p, fn=HARD_SIGMOID, variant=variant, c=0.5, training=True,
                              noise=xi)
    half = F.noisy_activation(x.to(dtype), p, fn=HARD_SIGMOID, variant=variant, c=0.5,
                              training=True, noise=xi.to(dtype))
    assert half.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    torch.testing.assert_close(half.float(), full, rtol=tol, atol=tol)
    ev = F.noisy_activation(x.to(dtype), p, fn=HARD_SIGMOID, variant=variant, c=0.5,
                            training=False)
    assert ev.dtype == dtype and torch.isfinite(ev).all()


def test_non_contiguous_and_empty(path):
    x = torch.randn(16, 8) * 3
    xi = torch.randn(16, 8)
    p = torch.rand(16)
    a = F.noisy_hard_tanh(x.t(), p, variant="NAH", training=True, noise=xi.t(), dim=1)
    b = F.noisy_hard_tanh(x.t().contiguous(), p, variant="NAH", training=True,
                          noise=xi.t().contiguous(), dim=1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for training in (True, False):
        e = F.noisy_hard_tanh(torch.empty(0, 4), torch.rand(4), training=training)
        assert e.shape == (0, 4)


def test_per_feature_p_along_dim(path):
    x = torch.randn(2, 3, 5) * 3
    xi = torch.randn(2, 3, 5)
    p = torch.tensor([0.1, 0.5, -0.9], dtype=torch.float64)
    out = F.noisy_hard_tanh(x, p.float(), variant="NAN", alpha=1.0, c=1.0, training=True,
                            noise=xi, dim=1)
    want = ref.phi(x.double().numpy(), xi.double().numpy(), p.numpy()[None, :, None],
                   fn="hard_tanh", variant="NAN", alpha=1.0, c=1.0)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)
    out_last = F.noisy_hard_tanh(x.transpose(1, 2), p.float(), variant="NAN", alpha=1.0, c=1.0,
                                 training=True, noise=xi.transpose(1, 2), dim=-1)
    torch.testing.assert_close(out_last, out.transpose(1, 2))


def test_seed_and_generator_reproducible(path):
    x = torch.randn(100) * 3
    p = torch.tensor([0.5])
    torch.manual_seed(7)
    a = F.noisy_hard_tanh(x, p, training=True)
    torch.manual_seed(7)
    b = F.noisy_hard_tanh(x, p, training=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    c1 = F.noisy_hard_tanh(x, p, training=True, generator=g1)
    c2 = F.noisy_hard_tanh(x, p, training=True, generator=g2)
    torch.testing.assert_close(c1, c2, rtol=0, atol=0)
    assert not torch.equal(c1, F.noisy_hard_tanh(x, p, training=True, generator=g1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"c": -0.1}, "c must be >= 0"),
        ({"c": float("nan")}, "c must be finite"),
        ({"c": float("inf")}, "c must be finite"),
        ({"alpha": float("nan")}, "alpha must be finite"),
        ({"alpha": -1.0}, "alpha must be >= 0"),
        ({"variant": "NAX"}, "variant must be one of"),
        ({"p": torch.rand(3)}, "p has shape"),
        ({"p": None}, "p is required"),
        ({"dim": 5, "p": torch.rand(4)}, "dim=5 is out of range"),
        ({"noise": torch.rand(3)}, "noise has shape"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    args = {"p": torch.rand(4), "training": True, **kwargs}
    p = args.pop("p")
    with pytest.raises(ValueError, match=match):
        F.noisy_hard_tanh(torch.randn(2, 4), p, **args)


def test_nanis_on_soft_function_is_an_error():
    with pytest.raises(ValueError, match="NANIS"):
        F.noisy_tanh(torch.randn(3), None, variant="NANIS", training=True)


@settings(max_examples=60, deadline=None)
@given(
    x=st.floats(-50, 50, allow_nan=False),
    p=st.floats(-5, 5, allow_nan=False),
    c=st.floats(0, 40, allow_nan=False),
    alpha=st.floats(0, 2, allow_nan=False),
    xi=st.floats(-6, 6, allow_nan=False),
)
def test_properties_hard_tanh(x, p, c, alpha, xi):
    xt = torch.tensor([x], dtype=torch.float64)
    pt = torch.tensor([p], dtype=torch.float64)
    noise = torch.tensor([xi], dtype=torch.float64)
    s = F.noise_scale(HARD_TANH.h(xt) - xt, pt, c)
    assert 0 <= s.item() <= c / 4 + 1e-12  # σ ∈ [0, c/4)
    assert F.noise_scale(HARD_TANH.h(xt) - xt, -pt, c).item() == pytest.approx(s.item())  # even in p
    out = F.noisy_hard_tanh(xt, pt, variant="NAN", alpha=alpha, c=c, training=True, noise=noise)
    want = ref.phi(np.array([x]), np.array([xi]), p, fn="hard_tanh", variant="NAN", alpha=alpha,
                   c=c)
    assert out.item() == pytest.approx(float(want[0]), rel=1e-9, abs=1e-9)
    if abs(x) <= 1:
        assert out.item() == pytest.approx(x, abs=1e-12)  # exactly linear, no noise
    nah = F.noisy_hard_tanh(xt, pt, variant="NAH", alpha=alpha, c=c, training=True, noise=noise)
    det = alpha * HARD_TANH.h(xt) + (1 - alpha) * xt
    direction = F.noise_direction(xt, alpha)
    assert ((nah - det) * direction).item() >= 0  # the half-normal noise points along d(x)
