"""The ablation experiment: each ablated unit against an independent computation, its
installation in a NoisyLSTM, the grid rows, and the smoke presets end to end."""

import json
import os

import pytest
import torch

from noisyact import NoisyLSTM
from noisyact import functional as F
from noisyact.experiments import ablation as A
from noisyact.experiments import get, run_experiment
from noisyact.saturating import HARD_SIGMOID, HARD_TANH

FIXTURE_PTB = os.path.join(os.path.dirname(__file__), "data", "ptb")


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models: one thread is faster, and much faster on a machine busy with other runs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _sgn(x):  # the paper's sgn, sgn(0) = 1
    return torch.where(x >= 0, 1.0, -1.0)


def _sigma9(x, p, c, fn):
    delta = fn.h(x) - fn.u(x)
    return c * (torch.sigmoid(p * delta) - 0.5) ** 2, delta


def _inputs(n=7, rows=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn(rows, n, generator=g)
    x[0, 0] = 0.0
    xi = torch.randn(rows, n, generator=g)
    return x, xi


@pytest.mark.parametrize("fn,alpha", [(HARD_TANH, 1.15), (HARD_SIGMOID, 1.1), (HARD_TANH, 0.9)])
def test_sigma_const_formula(fn, alpha):
    x, xi = _inputs()
    unit = A.AblatedOutputNoise(fn, 7, alpha=alpha, c=0.5, sigma="const")
    s9, delta = _sigma9(x, unit.p.detach(), 0.5, fn)
    sat = delta != 0
    assert sat.any() and (~sat).any()
    sbar = s9[sat].mean()
    d = -_sgn(x) * (1.0 if 1 - alpha >= 0 else -1.0)
    want = alpha * fn.h(x) + (1 - alpha) * fn.u(x) + d * sbar * sat.float() * xi
    torch.testing.assert_close(unit.noisy(x, xi), want)
    # a constant where saturated: not NAN's σ(x) of Eq. 9
    nan = F.noisy_activation(x, unit.p.detach(), fn=fn, variant="NAN", alpha=alpha, c=0.5,
                             training=True, noise=xi, dim=-1)
    assert (unit.noisy(x, xi) - nan).abs().max() > 1e-3


def test_full_unit_equals_the_library_nan_and_nah():
    x, xi = _inputs()
    for half, variant in ((False, "NAN"), (True, "NAH")):
        unit = A.AblatedOutputNoise(HARD_SIGMOID, 7, alpha=1.1, c=0.5, half_normal=half)
        want = F.noisy_hard_sigmoid(x, unit.p.detach(), variant=variant, alpha=1.1, c=0.5,
                                    training=True, noise=xi, dim=-1)
        torch.testing.assert_close(unit.noisy(x, xi), want)
        unit.eval()
        torch.testing.assert_close(unit(x), F.noisy_hard_sigmoid(
            x, unit.p.detach(), variant=variant, alpha=1.1, c=0.5, training=False, dim=-1))


def test_direction_formulas():
    x, xi = _inputs()
    coin = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) < 0.5,
                       -1.0, 1.0)
    for direction in ("random", "outward"):
        unit = A.AblatedOutputNoise(HARD_TANH, 7, alpha=1.15, c=0.5, direction=direction,
                                    half_normal=True)
        s9, _ = _sigma9(x, unit.p.detach(), 0.5, HARD_TANH)
        d = coin if direction == "random" else _sgn(x) * -1.0  # outward: −d = sgn(x)sgn(1−α)
        want = 1.15 * HARD_TANH.h(x) - 0.15 * x + d * s9 * xi.abs()
        torch.testing.assert_close(unit.noisy(x, xi, coin), want)


def test_dropout_noise_formula():
    x, xi = _inputs()
    for fn in (HARD_TANH, HARD_SIGMOID):
        unit = A.DropoutNoise(fn, 7, c=0.5)
        s9, delta = _sigma9(x, unit.p, 0.5, fn)
        s = s9[delta != 0].mean()
        torch.testing.assert_close(unit.noisy(x, xi), fn.h(x) * (1 + s * xi))
        unit.eval()
        torch.testing.assert_close(unit(x), fn.h(x))


@pytest.mark.parametrize("make", [
    lambda: A.AblatedOutputNoise(HARD_TANH, 5, alpha=1.15, c=2.0, direction="outward",
                                 half_normal=True),
    lambda: A.AblatedOutputNoise(HARD_TANH, 5, alpha=1.15, c=2.0, direction="random",
                                 half_normal=True),
    lambda: A.AblatedOutputNoise(HARD_SIGMOID, 5, alpha=1.1, c=2.0, sigma="const"),
    lambda: A.DropoutNoise(HARD_TANH, 5, c=2.0),
])
def test_eval_is_the_monte_carlo_mean_of_training(make):
    torch.manual_seed(0)
    unit = make()
    with torch.no_grad():
        unit.p.fill_(3.0)  # large noise so that a wrong expectation shows
    x = torch.tensor([-6.0, -1.5, 0.3, 2.5, 9.0])
    xs = x.expand(200_000, 5).clone()
    with torch.no_grad():
        unit.train()
        mc = unit(xs).mean(0)
        unit.eval()
        ev = unit(x)
    torch.testing.assert_close(mc, ev, atol=0.01, rtol=0)
    if isinstance(unit, A.AblatedOutputNoise) and unit.direction == "outward":
        inward = F.noisy_hard_tanh(x, unit.p, variant="NAH", alpha=1.15, c=2.0,
                                   training=False, dim=-1)
        assert (ev - inward).abs().max() > 0.1  # the direction changes the mean


def test_alpha_one_direction_points_inward():
    x = torch.tensor([-2.0, -0.0, 0.0, 3.0])
    torch.testing.assert_close(F.noise_direction(x, 1.0), -_sgn(x))
    torch.testing.assert_close(F.noise_direction(torch.tensor([0.0]), 1.0), torch.tensor([-1.0]))


def _count_calls(rnn):
    """Calls of each unit, counted by wrapping its forward (a forward hook would itself send the
    layer to the reference loop, so that the hook sees the calls)."""
    counts = {n: 0 for n in ("gate", "cand", "cell")}
    for n in counts:
        unit = getattr(rnn.noise_l0, n)

        def counted(*args, n=n, forward=unit.forward, **kwargs):
            counts[n] += 1
            return forward(*args, **kwargs)

        unit.forward = counted
    return counts


@pytest.mark.parametrize("row", ["sigma-const", "d-random", "d-outward", "dropout-noise"])
def test_ablated_units_run_inside_the_lstm(row):
    torch.manual_seed(0)
    rnn = A.build_rnn(row, 3, 4, batch_first=True)
    for n in ("gate", "cand", "cell"):
        m = getattr(rnn.noise_l0, n)
        assert type(m) in (A.AblatedOutputNoise, A.DropoutNoise)
    assert rnn.noise_l0.gate.p.shape == (12,) and rnn.noise_l0.cell.p.shape == (4,)
    counts = _count_calls(rnn)
    x = torch.randn(2, 6, 3)
    out, _ = rnn(x)
    assert counts == {"gate": 6, "cand": 6, "cell": 6}
    out.sum().backward()
    # a unit whose output is recognisably different changes the layer's output
    rnn.eval()
    ref, _ = rnn(x)
    rnn.noise_l0.cell.forward = lambda t: torch.zeros_like(t)
    zero, _ = rnn(x)
    assert torch.equal(zero, torch.zeros_like(zero)) and not torch.equal(ref, zero)


@pytest.mark.parametrize("row", ["NAN", "p-fixed", "c2-a1.3"])
def test_library_rows_keep_the_fused_path(row):
    rnn = A.build_rnn(row, 3, 4, batch_first=True)
    counts = _count_calls(rnn)
    rnn(torch.randn(2, 6, 3))[0].sum().backward()
    assert counts == {"gate": 0, "cand": 0, "cell": 0}  # the fused layer never calls them


def test_eval_of_normal_noise_rows_equals_nan():
    torch.manual_seed(0)
    nan = A.build_rnn("NAN", 3, 5)
    x = torch.randn(7, 2, 3) * 4
    nan.eval()
    want, _ = nan(x)
    for row, same in (("sigma-const", True), ("d-random", True), ("d-outward", False)):
        other = A.build_rnn(row, 3, 5)
        other.load_state_dict(nan.state_dict(), strict=False)  # c is a buffer of NAN only
        other.eval()
        got, _ = other(x)
        assert torch.allclose(got, want, atol=1e-6) == same, row


def test_p_fixed_and_p_one():
    torch.manual_seed(0)
    for row in ("NAN", "p-fixed", "p-one"):
        rnn = A.build_rnn(row, 3, 4)
        ps = [getattr(rnn.noise_l0, n).p for n in ("gate", "cand", "cell")]
        rnn(torch.randn(5, 2, 3) * 5)[0].sum().backward()
        if row == "NAN":
            assert all(p.requires_grad and p.grad is not None for p in ps)
            continue
        assert all(not p.requires_grad and p.grad is None for p in ps)
        if row == "p-one":
            assert all(torch.equal(p, torch.ones_like(p)) for p in ps)
        else:
            assert all(p.abs().max() <= 1 and p.std() > 0.1 for p in ps)


def test_grid_rows_parse():
    assert len(A.GRID_ROWS) == 42 and len(set(A.GRID_ROWS)) == 42
    for c in A.GRID_C:
        for a in A.GRID_ALPHA:
            assert A.parse_grid_row(A.grid_row(c, a)) == (c, a)
    assert A.grid_row(0.5, 1.15) == "c0.5-a1.15" and "c0.5-a1.15" in A.ROWS
    assert set(A.COARSE_ROWS) <= set(A.GRID_ROWS)
    assert A.parse_grid_row("NAN") is None and A.parse_grid_row("p-one") is None
    rnn = A.build_rnn("c2-a1.3", 3, 4)
    gate, cell = rnn.noise_l0.gate, rnn.noise_l0.cell
    assert (gate.alpha, cell.alpha, float(gate.c), float(cell.c)) == (1.3, 1.3, 2.0, 2.0)
    assert gate.variant == "NAN"
    with pytest.raises(ValueError, match="unknown row"):
        A.build_rnn("sigma-nothing", 3, 4)


def test_plateau_update():
    hist = [{"step": 10, "train_loss": 1.0}, {"step": 10, "valid_error": 55.0},
            {"step": 20, "valid_error": 49.9}, {"step": 30, "valid_error": 20.0}]
    assert A.plateau_update(hist) == 20
    assert A.plateau_update(hist[:2]) is None


@pytest.mark.slow
def test_smoke_runs_end_to_end(tmp_path):
    exp = get("ablation")
    out = run_experiment(exp, "smoke", out=tmp_path / "abl", progress=False, log=lambda *_: None)
    text = (out / "results.md").read_text()
    for name in ("grid_score.png", "grid_plateau.png", "grid_c.png", "grid_alpha.png",
                 "curves.png"):
        assert (out / name).exists() and name in text
    for row in A.PRESETS["smoke"].rows:
        final = json.loads((out / row / "seed0" / "final.json").read_text())
        assert "test_score" in final and "left_plateau" in final and "plateau_update" in final
    assert "NAN < sigma-const" in text and "α = 1" in text


def test_ptb_task_smoke(tmp_path):
    out = run_experiment(get("ablation"), "smoke", out=tmp_path / "ptb", progress=False,
                         log=lambda *_: None,
                         overrides=["task=ptb", f"ptb_data_dir={FIXTURE_PTB}", "ptb_epochs=1",
                                    "ptb_max_train_tokens=1000", "rows=NAN,sigma-const,c0.5-a1.15,c5-a1"])
    final = json.loads((out / "sigma-const" / "seed0" / "final.json").read_text())
    assert 1 < final["test_score"] == final["test_ppl"] < 1000
    assert "grid_score.png" in (out / "results.md").read_text()
    assert not (out / "grid_plateau.png").exists()


def test_unknown_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        run_experiment(get("ablation"), "smoke", out=tmp_path / "x", progress=False,
                       overrides=["task=mnist"])


def test_library_lstm_is_what_build_rnn_wraps():
    assert isinstance(A.build_rnn("NAH", 2, 3), NoisyLSTM)


def test_results_page_has_the_heading_publish_fills():
    exp = get("ablation")
    page = os.path.join(os.path.dirname(__file__), "..", "docs", "results.md")
    with open(page, encoding="utf-8") as f:
        assert f"## {exp.name} ({exp.paper_table})\n" in f.read()


def test_alpha_only_is_nan_without_noise():
    """alpha-only trains with the unit NAN evaluates with: no randomness in training, the same
    outputs as NAN in eval (same init), a non-zero input gradient where hard has none."""
    x = 4 * torch.randn(6, 3, 5)
    torch.manual_seed(0)
    alpha = A.build_rnn("alpha-only", 5, 4).train()
    torch.manual_seed(0)
    nan = A.build_rnn("NAN", 5, 4).eval()
    torch.manual_seed(0)
    hard = A.build_rnn("hard", 5, 4).train()
    out1, _ = alpha(x)
    out2, _ = alpha(x)
    assert torch.equal(out1, out2)
    torch.testing.assert_close(out1, nan(x)[0])
    nan.train()
    assert not torch.equal(nan(x)[0], nan(x)[0])  # while NAN's training output is random
    # in saturation (|x| ≫ 1 everywhere) hard passes no gradient to the input; alpha-only does
    big = (50 * torch.ones(2, 1, 5)).requires_grad_()
    hard(big)[0].sum().backward()
    assert torch.count_nonzero(big.grad) == 0
    big.grad = None
    alpha(big)[0].sum().backward()
    assert torch.count_nonzero(big.grad) > 0
