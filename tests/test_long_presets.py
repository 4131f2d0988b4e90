"""The long presets (issue 16): schedules that fit their budgets, the plateau metric of Table 5,
the claims on it, and early stopping (best-validation checkpoint) in translation/captioning."""

from __future__ import annotations

import pytest

from noisyact import experiments
from noisyact.anneal import InverseSqrt
from noisyact.experiments import unique_count
from noisyact.experiments.base import check_settings
from noisyact.training.verdict import HOLDS, judge


def _first_at_floor(every: float, floor: float = 0.5, c0: float = 30.0) -> int:
    schedule = InverseSqrt(c0, every=every, floor=floor)
    lo, hi = 0, 10_000_000  # c is non-increasing in the step: bisect for the first step at floor
    while lo < hi:
        mid = (lo + hi) // 2
        if schedule(mid) <= floor:
            hi = mid
        else:
            lo = mid + 1
    return lo


# --- unique-count: updates to leave the plateau --------------------------------------------------

def _history(errors: dict[int, float]) -> list[dict]:
    """Training records every 10 updates and a validation record at each given step."""
    out: list[dict] = []
    for step in range(10, max(errors) + 1, 10):
        out.append({"step": step, "train_loss": 1.0})
        if step in errors:
            out.append({"step": step, "valid_error": errors[step], "valid_nll": 1.0})
    return out


def test_plateau_exit_is_the_first_evaluation_below_half():
    hist = _history({250: 55.0, 500: 54.9, 750: 50.0, 1000: 49.99, 1250: 60.0, 1500: 10.0})
    assert unique_count.plateau_exit(hist) == 1000  # 50.0 itself is not below 50
    assert unique_count.plateau_exit(hist, threshold=55.0) == 500
    assert unique_count.plateau_exit(_history({250: 55.0, 500: 52.0})) is None
    assert unique_count.plateau_exit([]) is None
    # training-only records (no valid_error) and a None error are ignored
    assert unique_count.plateau_exit([{"step": 5, "train_loss": 0.1},
                                      {"step": 6, "valid_error": None},
                                      {"step": 7, "valid_error": 3.0}]) == 7


def test_unique_count_final_has_the_plateau_metric():
    task = unique_count.UniqueCountTask("reference", unique_count.PRESETS["smoke"], 0)
    assert task.summarize(_history({250: 55.0, 500: 40.0})) == {"plateau_exit": 500,
                                                                "left_plateau": 1.0}
    assert task.summarize(_history({250: 55.0})) == {"plateau_exit": None,
                                                     "left_plateau": 0.0}


def test_plateau_claims_count_a_run_that_never_left_at_its_last_update():
    exp = experiments.get("unique-count")
    claims = {(c.better, c.than): c for c in exp.claims if c.metric == "plateau_exit"}
    assert set(claims) >= {("NAN-annealed", "NAN"), ("NAN", "reference"),
                           ("curriculum", "reference"), ("NANIL-annealed", "reference")}
    assert all(c.missing_as == "steps" and c.lower_is_better for c in claims.values())
    finals = {"NAN": [{"plateau_exit": e, "steps": 20_000} for e in (3000, 3500, 4000)],
              # never left: counted at 20,000, so NAN is clearly faster
              "reference": [{"plateau_exit": None, "steps": 20_000} for _ in range(3)]}
    finals["reference"][0]["plateau_exit"] = 19_000
    verdict = judge(claims[("NAN", "reference")], finals)
    assert verdict.than.values == (19_000.0, 20_000.0, 20_000.0)
    assert verdict.verdict == HOLDS


def test_unique_count_long_preset():
    cfg = unique_count.PRESETS["long"]
    check_settings(cfg)
    assert cfg["steps"] >= 12_000 and cfg["seeds"] >= 5 and cfg["eval_every"] <= 250
    assert list(cfg["rows"]) == list(unique_count.ROWS)
    floor_at = _first_at_floor(cfg["anneal_every"])
    assert 2 * cfg["steps"] / 3 <= floor_at <= cfg["steps"], floor_at
    task = unique_count.UniqueCountTask("NAN-annealed", cfg, 0)
    schedule = task.annealer(task.build_model()).schedule
    assert schedule(cfg["steps"]) == 0.5 and schedule(floor_at - 1) > 0.5


# --- associative recall: c goes 30 → 0.5 within the budget ---------------------------------------

@pytest.mark.parametrize("preset", ["quick", "long"])
def test_recall_annealing_reaches_its_floor_within_the_budget(preset):
    from noisyact.experiments import associative_recall as ar

    cfg = ar.PRESETS[preset]
    check_settings(cfg)
    floor_at = _first_at_floor(cfg["anneal_every"], cfg["c_floor"], cfg["c0"])
    assert floor_at <= cfg["steps"], (preset, floor_at)
    if preset == "long":  # in the last third, not earlier
        assert floor_at >= 2 * cfg["steps"] / 3
        assert (cfg["min_items"], cfg["max_items"]) == (2, 6)
        assert cfg["steps"] >= 10_000 and cfg["seeds"] >= 3
        task = ar.RecallTask("regular", {**cfg, "valid_size": 2}, 0)
        assert task.upper_bound(0) == 4 and task.upper_bound(cfg["steps"] // 2) == 6


# --- learning to execute: the level reached ------------------------------------------------------

def test_lte_long_preset_and_level_reached():
    from noisyact.experiments import learning_to_execute as lte

    cfg = lte.PRESETS["long"]
    check_settings(cfg)
    assert cfg["steps"] >= 10 * lte.PRESETS["quick"]["steps"] and cfg["seeds"] >= 3
    task = lte.ExecuteTask("reference", {**lte.PRESETS["smoke"], "target_length": 3,
                                         "target_nesting": 2}, 0)
    assert task.level == (1, 1) and task.summarize([])["final_level"] == 0
    task.level = (2, 2)  # (1,1) (2,1) (3,1) (1,2) (2,2): the fifth level
    assert task.summarize([])["final_level"] == 4
