"""The long presets (issue 16): schedules that fit their budgets, the plateau metric of Table 5,
the claims on it, and early stopping (best-validation checkpoint) in translation/captioning."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from noisyact import experiments
from noisyact.anneal import InverseSqrt
from noisyact.experiments import seq2seq, unique_count
from noisyact.experiments.base import check_settings
from noisyact.training.verdict import HOLDS, judge

MT_FIXTURE = Path(__file__).parent / "data" / "multi30k"


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    assert cfg.steps >= 12_000 and cfg.seeds >= 5 and cfg.eval_every <= 250
    assert list(cfg.rows) == list(unique_count.ROWS)
    floor_at = _first_at_floor(cfg.anneal_every)
    assert 2 * cfg.steps / 3 <= floor_at <= cfg.steps, floor_at
    task = unique_count.UniqueCountTask("NAN-annealed", cfg, 0)
    schedule = task.annealer(task.build_model()).schedule
    assert schedule(cfg.steps) == 0.5 and schedule(floor_at - 1) > 0.5


# --- associative recall: c goes 30 → 0.5 within the budget ---------------------------------------

@pytest.mark.parametrize("preset", ["quick", "long"])
def test_recall_annealing_reaches_its_floor_within_the_budget(preset):
    from noisyact.experiments import associative_recall as ar

    cfg = ar.PRESETS[preset]
    check_settings(cfg)
    floor_at = _first_at_floor(cfg.anneal_every, cfg.c_floor, cfg.c0)
    assert floor_at <= cfg.steps, (preset, floor_at)
    if preset == "long":  # in the last third, not earlier
        assert floor_at >= 2 * cfg.steps / 3
        assert (cfg.min_items, cfg.max_items) == (2, 6)
        assert cfg.steps >= 10_000 and cfg.seeds >= 3
        task = ar.RecallTask("regular", replace(cfg, valid_size=2), 0)
        assert task.upper_bound(0) == 4 and task.upper_bound(cfg.steps // 2) == 6


# --- learning to execute: the level reached ------------------------------------------------------

def test_lte_long_preset_and_level_reached():
    from noisyact.experiments import learning_to_execute as lte

    cfg = lte.PRESETS["long"]
    check_settings(cfg)
    assert cfg.steps >= 10 * lte.PRESETS["quick"].steps and cfg.seeds >= 3
    task = lte.ExecuteTask("reference", replace(lte.PRESETS["smoke"], target_length=3,
                                                target_nesting=2), 0)
    assert task.level == (1, 1) and task.summarize([])["final_level"] == 0
    task.level = (2, 2)  # (1,1) (2,1) (3,1) (1,2) (2,2): the fifth level
    assert task.summarize([])["final_level"] == 4


# --- translation / captioning: early stopping on the validation NLL ------------------------------

class _Toy(seq2seq.EarlyStopping):
    """A task whose 'NLL' is the weight itself: the best checkpoint is the smallest weight."""

    def __init__(self, steps: int) -> None:
        self.cfg = SimpleNamespace(steps=steps)

    def evaluate(self, model, split):
        w = float(model.weight.detach().sum())
        return {"nll": w, "score": 100.0 - w}


def test_early_stopping_keeps_the_best_state_and_tests_it_at_the_end():
    model = nn.Linear(1, 1, bias=False)
    task = _Toy(steps=4)
    for step, w in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)):
        with torch.no_grad():
            model.weight.fill_(w)
        task.on_evaluate(model, step, task.evaluate(model, "valid"))
    assert task.best_step == 2 and task.best_valid_nll == 1.0
    assert task.best_state["weight"].item() == 1.0  # a copy: later updates did not change it
    assert model.weight.item() == 5.0  # the live model is restored after testing the best
    assert task.summarize([]) == {"best_valid_nll": 1.0, "best_step": 2,
                                  "best_test_nll": 1.0, "best_test_score": 99.0}
    again = _Toy(steps=4)
    again.load_state_dict(task.state_dict())
    assert again.summarize([]) == task.summarize([])
    nan = _Toy(steps=9)
    nan.on_evaluate(model, 1, {"nll": math.nan})
    assert nan.summarize([]) == {"best_valid_nll": None, "best_step": None}


@pytest.mark.slow
def test_translation_resume_keeps_the_best_checkpoint(tmp_path):
    from noisyact.experiments import translation as mt
    from noisyact.training import load_checkpoint, train

    exp = experiments.get("translation")
    cfg = replace(mt.PRESETS["smoke"], data_dir=str(MT_FIXTURE), eval_size=6, eval_every=2,
                  ckpt_every=4, steps=8, valid_bleu_size=6, max_out=8)
    tc = exp.train_config(cfg, seed=0)
    full = train(exp.make_task("NAH", cfg, 0), tc, tmp_path / "full", progress=False)
    assert train(exp.make_task("NAH", cfg, 0), tc, tmp_path / "resumed", progress=False,
                 stop_at=5) == {"stopped_at": 5}
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["task"]
    assert saved["best_step"] in (2, 4) and saved["best_state"] is not None
    resumed = train(exp.make_task("NAH", cfg, 0), tc, tmp_path / "resumed", progress=False,
                    resume=True)
    timing = "train_tokens_per_s"  # measured, not a result
    assert {k: v for k, v in resumed.items() if k != timing} == {
        k: v for k, v in full.items() if k != timing}
    valid = [r["valid_nll"] for r in json_lines(tmp_path / "full" / "metrics.jsonl")
             if "valid_nll" in r]
    assert full["best_valid_nll"] == min(valid)
    for key in ("best_step", "best_test_bleu", "best_test_bleu_beam", "best_test_nll",
                "test_bleu_beam"):
        assert full[key] is not None, key
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["task"]["best_state"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["task"]["best_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_captioning_final_has_the_early_stopped_scores(tmp_path):
    from noisyact.experiments import captioning as cap
    from noisyact.training import train

    exp = experiments.get("captioning")
    cfg = replace(cap.PRESETS["smoke"], eval_every=2)
    final = train(exp.make_task("NANIL", cfg, 0), exp.train_config(cfg, 0), tmp_path,
                  progress=False)
    assert final["best_step"] in range(2, cfg.steps + 1, 2)
    assert all(final[f"best_test_bleu{n}"] is not None for n in range(1, 5))
    assert final["best_test_nll"] is not None and final["best_valid_nll"] is not None
    names = {c.metric for c in exp.claims}
    assert names == {"best_test_bleu4", "best_test_nll"}
    assert {c.metric for c in experiments.get("translation").claims} == {
        "best_test_bleu_beam", "best_valid_nll"}


# --- initialisation as §6.4-6.5 and TASKS.md §4 ---------------------------------------------------

def _is_scaled_orthogonal(w: torch.Tensor, scale: float) -> bool:
    return torch.allclose(w @ w.t(), scale**2 * torch.eye(w.shape[0], dtype=w.dtype), atol=1e-9)


@pytest.mark.parametrize("row", ["reference", "NAH"])
def test_nmt_rec2_context_to_gates_is_a_scaled_orthogonal_matrix(row):
    from noisyact.experiments import translation as mt

    cfg = replace(mt.PRESETS["smoke"], dim=6, dim_word=4)
    D = cfg.dim
    torch.manual_seed(0)
    w = mt.NMT(30, 30, cfg, mt.ROWS[row]).rec2.weight_ih.detach().double()
    assert w.shape == (3 * D, 2 * D)
    assert _is_scaled_orthogonal(w[: 2 * D], cfg.ortho_scale)  # W_c: one 2D × 2D matrix
    assert not _is_scaled_orthogonal(w[2 * D:], cfg.ortho_scale)  # W'_c: init_std·N
    torch.manual_seed(0)
    off = mt.NMT(30, 30, replace(cfg, rec2_ortho=False), mt.ROWS[row])
    assert not _is_scaled_orthogonal(off.rec2.weight_ih.detach().double()[: 2 * D],
                                     cfg.ortho_scale)


@pytest.mark.parametrize("row", ["reference", "NAH"])
def test_captioner_recurrent_matrix_is_orthogonal_times_0_01(row):
    from noisyact.experiments import captioning as cap

    cfg = cap.PRESETS["smoke"]
    assert all(p.ortho_scale == 0.01 for p in cap.PRESETS.values())
    model = cap.ShowAttendTell(20, 8, cfg, cap.ROWS[row].kind, None, 0.0)
    w = model.cell.weight_hh.detach().double()
    H = cfg.dim
    for k in range(4):  # i, f, o/g blocks: each orthogonal × 0.01
        assert _is_scaled_orthogonal(w[k * H: (k + 1) * H], 0.01)


@pytest.mark.parametrize("name", ["unique-count", "associative-recall", "learning-to-execute",
                                  "translation", "captioning"])
def test_every_long_preset_is_valid_and_has_seeds_to_decide(name):
    exp = experiments.get(name)
    cfg = exp.presets["long"]
    check_settings(cfg)
    assert cfg.seeds >= 3
    assert cfg.steps > exp.presets["quick"].steps
    exp.train_config(cfg, 0)  # the loop accepts it
