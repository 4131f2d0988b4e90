"""Issue 33: the noise monitor reports what the noise does, per unit, against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import noisyact


def test_statistics_of_one_unit_match_a_hand_computation(path):
    torch.manual_seed(0)
    unit = noisyact.NoisyHardTanh("NAN", c=5.0, num_parameters=5, dim=-1)
    with torch.no_grad():
        unit.p.copy_(torch.tensor([-1.0, -0.5, 0.1, 0.5, 1.0]))
    x = 2 * torch.randn(64, 5)
    with noisyact.monitor(nn.Sequential(unit)) as mon:
        y = unit(x)
    st = mon.stats()["0"]
    delta = x.clamp(-1, 1) - x
    sat = (delta != 0).double().mean().item()
    sigma = 5.0 * (torch.sigmoid(unit.p.detach() * delta) - 0.5) ** 2  # p along the last axis
    assert st.calls == 1 and st.elements == x.numel()
    assert st.saturated == pytest.approx(sat)
    assert st.mean_sigma == pytest.approx(sigma.mean().item(), rel=1e-5)
    expected = unit.eval()(x)
    moved = ((y - expected).abs() > 1e-3).double().mean().item()
    assert st.moved == pytest.approx(moved)
    assert 0 < st.moved <= st.saturated  # noise only where saturated
    assert st.c == 5.0


def test_unsaturated_inputs_show_no_noise_and_eval_is_not_counted():
    model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid())
    noisyact.noisify(model, "NAN")
    with noisyact.monitor(model) as mon:
        model(0.01 * torch.randn(16, 4))
        model.eval()(3 * torch.randn(16, 4))  # eval mode: nothing recorded
    st = mon.stats()["1"]
    assert st.calls == 1 and st.saturated == 0 and st.moved == 0
    assert "saw no noise" in str(mon)


def test_sampling_and_removal():
    unit = noisyact.NoisyHardTanh("NAH")
    mon = noisyact.monitor(nn.Sequential(unit), every=3)
    for _ in range(7):
        unit(torch.randn(4))
    assert mon.stats()["0"].calls == 3  # calls 1, 4, 7
    mon.reset()
    assert mon.stats()["0"].calls == 0
    mon.remove()
    unit(torch.randn(4))
    assert mon.stats()["0"].calls == 0 and not unit._forward_hooks
    with pytest.raises(ValueError, match="every must be a positive int"):
        noisyact.monitor(nn.Sequential(unit), every=0)
    with pytest.raises(ValueError, match="no noisy unit"):
        noisyact.monitor(nn.Linear(2, 2))


def test_units_of_a_recurrent_layer_on_sampled_calls(path):
    torch.manual_seed(0)
    lstm = noisyact.NoisyLSTM(3, 4, variant="NANI")
    x = 3 * torch.randn(6, 2, 3)
    with noisyact.monitor(nn.Sequential(lstm), every=2) as mon:
        for _ in range(3):
            lstm(x)
        assert not lstm.noise_l0.gate._forward_hooks  # attached only during a sampled call
    stats = mon.stats()
    assert set(stats) == {"0.noise_l0.gate", "0.noise_l0.cand", "0.noise_l0.cell"}
    assert all(st.calls == 2 * x.shape[0] for st in stats.values())  # 2 of 3 calls, each step
    # NANI: σ = c everywhere
    assert stats["0.noise_l0.gate"].mean_sigma == pytest.approx(lstm.noise_l0.gate.c.item())


def test_tracker_anneals_logs_and_resumes():
    schedule = noisyact.InverseSqrt(c0=30.0, every=1, floor=0.5)
    logged = []

    def run(steps, state=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 6), noisyact.NoisyHardTanh("NAN"))
        tracker = noisyact.NoiseTracker(model, schedule, log_every=2,
                                        log=lambda v, s: logged.append((s, v)))
        if state:
            tracker.load_state_dict(state)
        for _ in range(steps):
            model(4 * torch.randn(8, 3))
            tracker.step()
        return model, tracker

    model, _ = run(4)
    assert [s for s, _ in logged] == [2, 4]
    assert logged[-1][1]["noise/c"] == pytest.approx(schedule(4))
    assert set(logged[-1][1]) >= {"noise/1/saturated", "noise/1/moved", "noise/1/mean_sigma"}
    assert float(model[1].c) == pytest.approx(schedule(4))
    _, half = run(2)
    again, _ = run(2, state=half.state_dict())
    assert float(again[1].c) == pytest.approx(schedule(4))
    assert math.isclose(float(again[1].c), float(model[1].c))
