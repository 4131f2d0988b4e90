"""NANIL with σ(x) of Eq. 9 injects almost no noise: the measurement behind the variant table."""

from __future__ import annotations

import pytest
import torch

import noisyact
from noisyact import functional as F

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
