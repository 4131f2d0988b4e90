"""NTM associative recall: data encoding, addressing, the NTM, Graves' RMSProp, failed seeds."""

import itertools
import json
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from noisyact.experiments import associative_recall as ar
from noisyact.experiments import get, run_experiment
from noisyact.experiments.ntm import NTM, address
from noisyact.training import GravesRMSprop, TrainConfig


def _items_and_query(x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Parse an episode back: the items after each item delimiter, the item after the query."""
    items, query = [], None
    for t in range(x.shape[0]):
        if x[t, 6] == 1:
            items.append(x[t + 1: t + 4, :6])
        if x[t, 7] == 1 and query is None:
            query = x[t + 1: t + 4, :6]
    return items, query


@given(st.integers(2, 16), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_target_is_the_successor_of_the_query(n, seed):
    x, y, q = ar.episode(n, torch.Generator().manual_seed(seed))
    assert x.shape == y.shape == (4 * (n + 2), 8)
    items, query = _items_and_query(x)
    assert len(items) == n and 0 <= q <= n - 2
    assert torch.equal(query, items[q])
    assert torch.equal(y[-3:, :6], items[q + 1])
    assert y[:-3].eq(0).all() and y[:, 6:].eq(0).all()
    assert x[-3:].eq(0).all() and x[4 * n + 4, 7] == 1  # the second query delimiter, then blank


def test_every_query_position_occurs():
    gen = torch.Generator().manual_seed(0)
    assert {ar.episode(4, gen)[2] for _ in range(200)} == {0, 1, 2}
    with pytest.raises(ValueError, match="2 items"):
        ar.episode(1, gen)


def test_batches_are_left_aligned_with_18_masked_bits_each():
    x, y, mask = ar.make_batch([2, 5, 3], torch.Generator().manual_seed(1))
    assert x.shape == (4 * 7, 3, 8)
    assert mask.sum((0, 2)).tolist() == [18.0, 18.0, 18.0]
    for b, n in enumerate([2, 5, 3]):
        T = 4 * (n + 2)
        assert mask[T - 3: T, b, :6].eq(1).all() and x[T:, b].eq(0).all()
    # chance level: logits 0 give 18 ln 2 / 6 = 3 ln 2
    assert ar.masked_nll(torch.zeros_like(x), y, mask).item() == pytest.approx(
        3 * torch.log(torch.tensor(2.0)).item())


def test_curriculum_upper_bound():
    task = ar.RecallTask("regular", replace(ar.PRESETS["smoke"], max_items=16, batch_size=128), 0)
    assert task.upper_bound(0) == 11  # ⌊0.72 · 16⌋
    assert task.upper_bound(3499) == 15 and task.upper_bound(3500) == 16  # 448k examples
    assert task.upper_bound(10**6) == 16
    counts = [int((task.batch(0, 0, 1)[2].sum((0, 2)) > 0).sum())]
    assert counts == [128]


def test_addressing_content_shift_sharpen():
    B, N, M = 2, 6, 4
    memory = torch.eye(N, M).expand(B, N, M).clone() + 0.01
    prev = torch.full((B, N), 1 / N)
    k = memory[:, 2].clone()
    one = torch.ones(B, 1)
    still = torch.tensor([[0.0, 1.0, 0.0]]).expand(B, 3)
    w = address(memory, prev, k, 50 * one, one, still, one)
    assert (w.argmax(-1) == 2).all() and (w[:, 2] > 0.9).all()
    forward = torch.tensor([[0.0, 0.0, 1.0]]).expand(B, 3)
    w2 = address(memory, prev, k, 50 * one, one, forward, one)
    assert torch.allclose(w2, torch.roll(w, 1, -1), atol=1e-6)  # focus moved to slot 3
    w3 = address(memory, prev, k, 50 * one, 0 * one, still, one)  # g = 0: previous weights
    assert torch.allclose(w3, prev)
    sharp = address(memory, prev, k, 2 * one, one, still, 5 * one)
    soft = address(memory, prev, k, 2 * one, one, still, one)
    assert (sharp.max(-1).values > soft.max(-1).values).all()
    assert torch.allclose(w.sum(-1), torch.ones(B))


def test_addressing_is_finite_on_zero_memory_and_zero_weights():
    B, N, M = 2, 5, 3
    memory = torch.zeros(B, N, M)
    prev = torch.zeros(B, N)
    prev[:, 0] = 1
    gamma = torch.full((B, 1), 2.0, requires_grad=True)
    k = torch.zeros(B, M, requires_grad=True)
    w = address(memory, prev, k, torch.ones(B, 1), torch.zeros(B, 1),
                torch.tensor([[0.0, 1.0, 0.0]]).expand(B, 3), gamma)
    (w * torch.arange(N)).sum().backward()
    assert torch.isfinite(w).all() and torch.isfinite(gamma.grad).all()
    assert torch.isfinite(k.grad).all()


@pytest.mark.parametrize("controller", ["lstm", "ff"])
def test_ntm_runs_backward_and_noisy_eval_is_deterministic(controller):
    torch.manual_seed(0)
    net = NTM(8, 8, controller, hidden=12, noisy=True, memory_size=(10, 4))
    x, y, mask = ar.make_batch([2, 3], torch.Generator().manual_seed(0))
    out = net(x)
    assert out.shape == x.shape
    ar.masked_nll(out, y, mask).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))  # the noisy controller draws noise in training
    with pytest.raises(ValueError, match="controller"):
        NTM(8, 8, "gru")


def test_graves_rmsprop_matches_its_equations():
    torch.manual_seed(0)
    p = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = GravesRMSprop([p], lr=1e-2)
    ref = p.detach().clone()
    n = torch.zeros(5, dtype=torch.float64)
    g_bar, delta = n.clone(), n.clone()
    for _ in range(4):
        g = torch.randn(5, dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        n = 0.95 * n + 0.05 * g * g
        g_bar = 0.95 * g_bar + 0.05 * g
        delta = 0.9 * delta - 1e-2 * g / torch.sqrt(n - g_bar**2 + 1e-4)
        ref = ref + delta
    assert torch.allclose(p.detach(), ref, rtol=1e-12, atol=1e-14)
    for bad in ({"lr": -1.0}, {"eps": 0.0}, {"momentum": 1.0}, {"rho": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GravesRMSprop([p], **bad)


def test_train_config_rejects_bad_clipping_and_optimizer():
    with pytest.raises(ValueError, match="clip_value"):
        TrainConfig(steps=1, clip_value=-1.0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(steps=1, optimizer="rmsprop")


def test_smoke_run_reports_updates_to_solve_and_failed_seeds(tmp_path, monkeypatch):
    exp = get("associative-recall")
    real_loss = ar.RecallTask.loss

    def diverging(self, model, batch):  # the noisy row's seed 1 diverges at its 4th update
        loss = real_loss(self, model, batch)
        if self.row == "noisy-annealed" and self.seed == 1 and model.training:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 4:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(ar.RecallTask, "loss", diverging)
    out = run_experiment(exp, "smoke", seeds=2, out=tmp_path / "ar", progress=False,
                         overrides=["solved_nll=9.0", "optimizer=rmsprop-graves",
                                    "clip_value=10.0"], log=lambda *a: None)
    final = json.loads((out / "regular" / "seed0" / "final.json").read_text())
    assert final["updates_to_solve"] == 6 and final["solved"] == 1.0  # first evaluation
    failed = json.loads((out / "noisy-annealed" / "seed1" / "final.json").read_text())
    assert "nan" in failed["failed"] and "step 3" in failed["failed"]
    table = (out / "results.md").read_text()
    assert "| noisy-annealed | 2 (1 failed) |" in table
    metrics = (out / "noisy-annealed" / "seed0" / "metrics.jsonl").read_text()
    cs = [json.loads(r)["c"] for r in metrics.splitlines() if '"c"' in r]
    assert cs and cs[0] < 30.0 and all(a >= b for a, b in itertools.pairwise(cs))
