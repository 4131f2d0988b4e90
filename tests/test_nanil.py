"""NANIL with σ(x) of Eq. 9 injects almost no noise: the measurement behind the variant table;
NANIL with the authors' σ ("NANIL-authors") against the NumPy transcription, and what it does."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch

import noisyact
from noisyact import functional as F
from noisyact.variants import get_variant

N = 200_000


@pytest.mark.parametrize(("fn", "threshold"), [(F.noisy_hard_tanh, 1.0),
                                               (F.noisy_hard_sigmoid, 2.0)])
def test_nanil_eq9_never_moves_a_saturated_input_back(fn, threshold):
    g = torch.Generator().manual_seed(0)
    x = 4 * threshold * torch.randn(N, generator=g)
    p = torch.empty(N).uniform_(-1, 1, generator=g)
    saturated = x.abs() > threshold
    assert saturated.sum() > 50_000
    clean = fn(x, p, variant="NANIL", c=0.5, training=False, dim=0)
    changed = {}
    for c in (0.5, 5.0):
        noisy = fn(x, p, variant="NANIL", c=c, training=True, dim=0,
                   generator=torch.Generator().manual_seed(1))
        changed[c] = (noisy != clean)[saturated].float().mean().item()
        # in the linear regime σ = 0: the output is h(x) exactly
        assert torch.equal(noisy[~saturated], clean[~saturated])
    assert changed[0.5] == 0.0  # σ ≤ c/4 and ≈ c(p∆/4)² near the threshold: never enough
    assert changed[5.0] < 1e-3
    # what output noise of the same c does to the same units, for scale
    nan = fn(x, p, variant="NAN", c=0.5, alpha=1.0, training=True, dim=0,
             generator=torch.Generator().manual_seed(1))
    assert (nan != clean)[saturated].float().mean().item() > 0.99


@pytest.mark.parametrize("cls", [noisyact.NoisyLSTM, noisyact.NoisyGRU])
def test_nanil_eq9_gives_p_no_gradient_inside_recurrent_layers(cls):
    torch.manual_seed(0)
    rnn = cls(8, 16, num_layers=1, variant="NANIL")
    x = 3 * torch.randn(20, 4, 8)
    out, _ = rnn(x)
    out.square().sum().backward()
    p_grads = [p.grad for n, p in rnn.named_parameters() if n.endswith(".p")]
    assert len(p_grads) == (3 if cls is noisyact.NoisyLSTM else 2)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in p_grads)
    # the weights do learn: the layer is a hard-unit layer without effective noise
    assert torch.count_nonzero(rnn.weight_ih_l0.grad) > 0


# ---------------------------------------------------------------------------------------------
# NANIL with the authors' σ = c·softplus(p|∆| / (|ξ| + 1e-10)) ("NANIL-authors")

FNS = {"hard_tanh": F.noisy_hard_tanh, "hard_sigmoid": F.noisy_hard_sigmoid,
       "tanh": F.noisy_tanh, "sigmoid": F.noisy_sigmoid}


@pytest.mark.parametrize("fn", list(FNS))
@pytest.mark.parametrize("mode", ["off", "eager"])
def test_nanil_authors_matches_the_numpy_transcription(fn, mode):
    noisyact.set_fused_mode(mode)
    g = torch.Generator().manual_seed(3)
    x = 4 * torch.randn(64, 5, dtype=torch.float64, generator=g)
    xi = torch.randn(64, 5, dtype=torch.float64, generator=g)
    p = torch.empty(5, dtype=torch.float64).uniform_(-1, 1, generator=g)
    got = FNS[fn](x, p, variant="NANIL-authors", c=0.5, training=True, dim=1, noise=xi)
    want = ref.phi(x.numpy(), xi.numpy(), p.numpy(), fn=fn, variant="NANIL-authors", alpha=1.0,
                   c=0.5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    # eval: ξ → 0, h(x)
    ev = FNS[fn](x, p, variant="NANIL-authors", c=0.5, training=False, dim=1)
    np.testing.assert_allclose(ev.numpy(), ref.expectation(x.numpy(), p.numpy(), fn=fn,
                                                           variant="NANIL-authors", alpha=1.0,
                                                           c=0.5))


@pytest.mark.parametrize("fn", ["hard_tanh", "hard_sigmoid", "tanh"])
@pytest.mark.parametrize("mode", ["off", "eager"])
def test_nanil_authors_gradcheck(fn, mode):
    """First derivatives in x and p (the fused backward kernel on the hard functions)."""
    noisyact.set_fused_mode(mode)
    g = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(6, 4, dtype=torch.float64, generator=g)).requires_grad_()
    xi = torch.randn(6, 4, dtype=torch.float64, generator=g)
    p = torch.empty(4, dtype=torch.float64).uniform_(-1, 1, generator=g).requires_grad_()
    torch.autograd.gradcheck(
        lambda x_, p_: FNS[fn](x_, p_, variant="NANIL-authors", c=0.7, training=True, dim=1,
                               noise=xi), (x, p))


def test_nanil_authors_variant_is_registered_and_defaults_unchanged():
    v = get_variant("nanil-AUTHORS")
    assert v.name == "NANIL-authors" and v.sigma == "authors" and v.learned_p
    assert not v.output_noise and not v.half_normal
    assert get_variant("NANIL").sigma == "eq9"  # the paper's NANIL stays the default
    assert noisyact.NoisyHardTanh("nanil-authors").variant == "NANIL-authors"
    assert F.default_c("NANIL-authors") == 0.25  # the authors' code default


@pytest.mark.parametrize(("fn", "threshold"), [(F.noisy_hard_tanh, 1.0),
                                               (F.noisy_hard_sigmoid, 2.0)])
@pytest.mark.parametrize("mode", ["off", "eager"])
def test_nanil_authors_moves_saturated_inputs_back(fn, threshold, mode):
    """The same measurement as for Eq. 9 (0 changed there): with the authors' σ at c = 0.5,
    3.3 % (hard-tanh) / 1.6 % (hard-sigmoid) of all saturated outputs change, 26 % / 13 % of
    those within 1.5 x_t, and every output of the linear regime is noisy (σ = c ln 2 at ∆ = 0)."""
    noisyact.set_fused_mode(mode)
    g = torch.Generator().manual_seed(0)
    x = 4 * threshold * torch.randn(N, generator=g)
    p = torch.empty(N).uniform_(-1, 1, generator=g)
    saturated = x.abs() > threshold
    clean = fn(x, p, variant="NANIL", c=0.5, training=False, dim=0)
    noisy = fn(x, p, variant="NANIL-authors", c=0.5, training=True, dim=0,
               generator=torch.Generator().manual_seed(1))
    differs = noisy != clean
    near = saturated & (x.abs() < 1.5 * threshold)
    assert differs[saturated].float().mean().item() > 0.01
    assert differs[near].float().mean().item() > 0.1
    assert differs[~saturated].float().mean().item() > 0.99


@pytest.mark.parametrize("cls", [noisyact.NoisyLSTM, noisyact.NoisyGRU])
@pytest.mark.parametrize("mode", ["off", "eager"])
def test_nanil_authors_gives_p_a_gradient_inside_recurrent_layers(cls, mode):
    noisyact.set_fused_mode(mode)
    torch.manual_seed(0)
    rnn = cls(8, 16, num_layers=1, variant="NANIL-authors")
    x = 3 * torch.randn(20, 4, 8)
    out, _ = rnn(x)
    out.square().sum().backward()
    p_grads = [p.grad for n, p in rnn.named_parameters() if n.endswith(".p")]
    assert len(p_grads) == (3 if cls is noisyact.NoisyLSTM else 2)
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in p_grads)


def _variants_in(model):
    return {m.variant for m in model.modules() if isinstance(getattr(m, "variant", None), str)}


@pytest.mark.parametrize(("experiment", "row", "other"), [
    ("unique-count", "NANIL-authors-annealed", "NANIL-annealed"),
    ("captioning", "NANIL-authors", "NANIL"),
    ("ablation", "NANIL-authors", "NANIL"),
])
def test_experiment_rows_with_the_authors_sigma_build_it(experiment, row, other):
    """The NANIL-authors rows put the authors' σ in every noisy unit (a row name parsed as its
    first word would silently build NANIL), and the paper's NANIL row keeps Eq. 9."""
    from noisyact.experiments import get

    exp = get(experiment)
    cfg = exp.presets["smoke"]
    assert row in exp.rows and other in exp.rows
    built = {}
    for r in (row, other):
        torch.manual_seed(0)
        built[r] = _variants_in(exp.make_task(r, cfg, 0).build_model())
    assert built[row] == {"NANIL-authors"}
    assert built[other] == {"NANIL"}
