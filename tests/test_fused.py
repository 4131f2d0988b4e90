"""The fused path against the reference path: same numbers, gradients, memory, compile."""

import os

import pytest
import torch

import noisyact
from noisyact import functional as F
from noisyact.saturating import HARD_SIGMOID, HARD_TANH

CASES = [(fn, v) for fn in (HARD_TANH, HARD_SIGMOID) for v in ("NAN", "NAH", "NANI", "NANIL", "NANIS")]


def _both_paths(fn, variant, x, p, xi, dim, **kw):
    outs = []
    for mode in ("off", noisyact.fused_mode()):
        noisyact.set_fused_mode(mode)
        xx = x.detach().clone().requires_grad_()
        pp = p.detach().clone().requires_grad_()
        y = F.noisy_activation(xx, pp, fn=fn, variant=variant, training=True, noise=xi,
                               dim=dim, **kw)
        g = torch.randn_like(y, generator=torch.Generator().manual_seed(5))
        y.backward(g)
        outs.append((y.detach(), xx.grad, pp.grad))
    return outs


# The compiled kernels are the same functions as the eager ones; a few cases compile them (each
# variant compiles its own kernel, which takes seconds on a cold cache).
COMPILED = [(HARD_TANH, "NAN"), (HARD_SIGMOID, "NAH"), (HARD_TANH, "NANIL")]
MODES_CASES = [("eager", fn, v) for fn, v in CASES] + [("compile", fn, v) for fn, v in COMPILED]


SHAPES = [((8, 33), 1, 1), ((8, 33), 33, -1), ((3, 4, 5), 4, 1)]  # (shape, p's size, p's dim)
# every eager case on every shape; compiled, each variant on one shape (each kernel and each
# kind of shape compiled once), unless the run compiles everything (NOISYACT_TEST_FUSED=compile)
EQUALS_CASES = [(m, fn, v, *s) for m, fn, v in MODES_CASES for s in SHAPES if m == "eager"
                or os.environ.get("NOISYACT_TEST_FUSED") == "compile"
                or SHAPES.index(s) == COMPILED.index((fn, v))]


@pytest.mark.parametrize("mode,fn,variant,shape,p_numel,dim", EQUALS_CASES,
                         ids=lambda a: getattr(a, "name", a))
def test_fused_equals_reference(mode, fn, variant, shape, p_numel, dim):
    noisyact.set_fused_mode(mode)
    torch.manual_seed(0)
    x = torch.randn(shape) * 3
    p = torch.rand(p_numel) * 2 - 1
    xi = torch.randn(shape)
    (y0, gx0, gp0), (y1, gx1, gp1) = _both_paths(fn, variant, x, p, xi, dim, alpha=1.15, c=0.7)
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(gx1, gx0)
    if gp0 is None:  # NANI, NANIS do not use p
        assert gp1 is None or (gp1 == 0).all()
    else:
        torch.testing.assert_close(gp1, gp0)


@pytest.mark.parametrize("mode,fn,variant", MODES_CASES, ids=lambda a: getattr(a, "name", a))
def test_fused_gradcheck(mode, fn, variant):
    noisyact.set_fused_mode(mode)
    torch.manual_seed(1)
    x = (torch.randn(4, 6, dtype=torch.float64) * 3).requires_grad_()
    with torch.no_grad():
        thr = fn.threshold
        x[(x.abs() - thr).abs() < 1e-2] += 0.1
        x[x.abs() < 1e-2] += 0.1
    p = (torch.rand(6, dtype=torch.float64) * 2 - 1).requires_grad_(variant in ("NAN", "NAH", "NANIL"))
    xi = torch.randn(4, 6, dtype=torch.float64)
    with torch.no_grad():  # keep x + σξ away from the kinks too (input-noise variants)
        z = x + 0.5 * xi
        x[((z.abs() - thr).abs() < 2e-2)] += 0.05

    def f(x, p):
        return F.noisy_activation(x, p, fn=fn, variant=variant, alpha=0.9, c=2.0,
                                  training=True, noise=xi, dim=-1)

    assert torch.autograd.gradcheck(f, (x, p))


def _saved_bytes(fn):
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total)


@pytest.mark.parametrize("source,recompute,limit", [("torch", False, 2.05), ("torch", True, 1.05),
                                                    ("kernel", False, 1.05)])
def test_saved_for_backward_at_most_two_inputs(source, recompute, limit):
    """x and ξ (torch noise), x alone (redrawn torch noise, or counter noise regenerated)."""
    noisyact.set_noise_source(source)
    x = (torch.randn(256, 512) * 3).requires_grad_()
    p = torch.rand(512, requires_grad=True)
    nbytes = x.numel() * x.element_size()

    def run():
        F.noisy_activation(x, p, fn=HARD_TANH, variant="NAH", training=True, dim=-1,
                           recompute_noise=recompute)

    saved = _saved_bytes(run)
    assert saved <= limit * nbytes
    noisyact.set_fused_mode("off")
    assert _saved_bytes(run) > 3 * nbytes  # the plain transcription saves much more


def test_recompute_noise_gives_the_same_gradients():
    noisyact.set_noise_source("torch")
    x = torch.randn(64, 32) * 3
    p = torch.rand(32) * 2 - 1
    grads = []
    for recompute in (False, True):
        xx, pp = x.clone().requires_grad_(), p.clone().requires_grad_()
        gen = torch.Generator().manual_seed(4)
        y = F.noisy_activation(xx, pp, fn=HARD_SIGMOID, variant="NAN", training=True, dim=-1,
                               generator=gen, recompute_noise=recompute)
        torch.randn(100)  # global RNG use in between must not matter
        y.sum().backward()
        grads.append((y.detach(), xx.grad, pp.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_autocast_bf16():
    lin = torch.nn.Linear(16, 16)
    act = noisyact.NoisyHardSigmoid("NAH", num_parameters=16, dim=-1)
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = act(lin(x))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert act.p.grad is not None and torch.isfinite(act.p.grad).all()


@pytest.mark.slow
def test_module_under_torch_compile_fullgraph():
    """Train and eval compile with fullgraph=True; with fallback_random the numbers equal eager."""
    import torch._inductor.config as cfg

    noisyact.set_fused_mode("compile")
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), noisyact.NoisyHardTanh("NAN", num_parameters=8))
    x = torch.randn(4, 8) * 3
    with cfg.patch(fallback_random=True):
        cm = torch.compile(m, fullgraph=True)
        torch.manual_seed(0)
        eager = m(x)
        torch.manual_seed(0)
        compiled = cm(x)
        torch.testing.assert_close(compiled, eager)
        compiled.sum().backward()
        assert m[1].p.grad is not None
        m.eval()
        torch.testing.assert_close(cm(x), m(x))


CLIP_CASES = [("eager", fn, v) for fn in (HARD_TANH, HARD_SIGMOID) for v in ("NAN", "NAH")] + [
    ("compile", HARD_SIGMOID, "NAH")]


@pytest.mark.parametrize("mode,fn,variant", CLIP_CASES, ids=lambda a: getattr(a, "name", a))
def test_clip_output_fused_equals_reference(mode, fn, variant):
    """clip_output=True: φ clipped to the range of h on both paths, zero gradient (x and p)
    where the clip is active, the same numbers and gradients as the reference ops."""
    noisyact.set_fused_mode(mode)
    torch.manual_seed(0)
    x = torch.randn(8, 33) * 40
    p = torch.rand(33) * 2 - 1
    xi = torch.randn(8, 33)
    kw = {"alpha": 1.15, "c": 2.0}
    (y0, gx0, gp0), (y1, gx1, gp1) = _both_paths(fn, variant, x, p, xi, -1, clip_output=True, **kw)
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(gx1, gx0)
    torch.testing.assert_close(gp1, gp0)
    lo, hi = fn.bounds
    assert y1.min() >= lo and y1.max() <= hi
    raw = F.noisy_activation(x, p, fn=fn, variant=variant, training=True, noise=xi, dim=-1, **kw)
    active = (raw < lo) | (raw > hi)
    assert active.sum() > 20 and (~active).sum() > 20  # both sides of the clip are exercised
    torch.testing.assert_close(y1[~active], raw[~active])
    assert (gx1[active] == 0).all() and (gx1[~active] != 0).any()
    (_, _, gp2), _ = _both_paths(fn, variant, x, p, xi, -1, **kw)  # unclipped: p gets more
    assert not torch.equal(gp1, gp2)


@pytest.mark.parametrize("fn,variant", [(HARD_TANH, "NAN"), (HARD_SIGMOID, "NAH")],
                         ids=lambda a: getattr(a, "name", a))
def test_clip_output_fused_gradcheck(fn, variant):
    torch.manual_seed(1)
    x = (torch.randn(6, 8, dtype=torch.float64) * 30).requires_grad_()
    p = (torch.rand(8, dtype=torch.float64) * 2 - 1).requires_grad_()
    xi = torch.randn(6, 8, dtype=torch.float64)
    lo, hi = fn.bounds

    def f(x, p, clip=True):
        return F.noisy_activation(x, p, fn=fn, variant=variant, alpha=1.15, c=2.0,
                                  training=True, noise=xi, dim=-1, clip_output=clip)

    with torch.no_grad():  # keep x away from the kinks of h and φ away from the clip bounds
        for _ in range(20):
            raw = f(x, p, False)
            near = ((raw - lo).abs() < 1e-2) | ((raw - hi).abs() < 1e-2)
            near |= ((x.abs() - fn.threshold).abs() < 1e-2) | (x.abs() < 1e-2)
            if not near.any():
                break
            x[near] += 0.05
        assert ((raw < lo) | (raw > hi)).any()
    assert torch.autograd.gradcheck(f, (x, p))
