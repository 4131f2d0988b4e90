"""The runner: resume after a kill, CLI, reports, DDP on CPU, data generators."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace

import pytest
import torch

from noisyact import cli, experiments
from noisyact.experiments import unique_count
from noisyact.experiments.config import ExperimentConfig, optional
from noisyact.training import load_checkpoint, train
from noisyact.training.checkpoint import CheckpointError, atomic_save


def _smoke_cfg(**kw):
    return replace(unique_count.PRESETS["smoke"], **{"steps": 24, "ckpt_every": 8, "eval_every": 8,
                                                     **kw})


@pytest.mark.parametrize("row", ["NAN-annealed", "curriculum"])
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, row):
    exp = experiments.get("unique-count")
    cfg = _smoke_cfg()
    tc = exp.train_config(cfg, seed=0)
    full = train(exp.make_task(row, cfg, 0), tc, tmp_path / "full", progress=False)
    killed = train(exp.make_task(row, cfg, 0), tc, tmp_path / "resumed", progress=False,
                   stop_at=13)
    assert killed == {"stopped_at": 13}
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 8
    resumed = train(exp.make_task(row, cfg, 0), tc, tmp_path / "resumed", progress=False,
                    resume=True)
    assert resumed == full
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert lines == (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "checkpoint.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):  # a ValueError: one CLI line
        load_checkpoint(p)
    atomic_save({"a": 1}, p)
    assert load_checkpoint(p) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_unique_count_targets():
    x, y = unique_count.make_batch(500, 26, 11, torch.Generator().manual_seed(0))
    assert x.shape == (500, 26) and x.min() >= 0 and x.max() <= 10
    assert y.tolist() == [len(set(row.tolist())) for row in x]


def test_curriculum_lengths():
    task = unique_count.UniqueCountTask("curriculum", _smoke_cfg(steps=100), 0)
    lengths = [task.length_at(s) for s in range(0, 101, 10)]
    assert lengths[0] == 5 and lengths[-1] == 26 and lengths == sorted(lengths)
    assert unique_count.UniqueCountTask("NAN", _smoke_cfg(), 0).length_at(0) == 26


@dataclass(frozen=True)
class _Toy(ExperimentConfig):
    steps: int = 10
    flag: bool = False
    name: str = "x"
    limit: int | None = optional()
    rows: tuple[str, ...] = ("a", "b")


def test_overrides():
    cfg = _Toy(lr=0.1)
    out = cfg.with_overrides(["steps=5", "lr=1e-3", "flag=true", "rows=a", "name=y",
                                "limit=3"])
    assert out == replace(cfg, steps=5, lr=1e-3, flag=True, rows=("a",), name="y", limit=3)
    assert out.to_dict()["rows"] == ["a"] and out.to_dict()["limit"] == 3
    assert "limit" not in cfg.to_dict()  # an optional setting left at None is not recorded
    assert out.with_overrides(["limit=none"]).limit is None
    assert isinstance(cfg.with_overrides(["lr=1"]).lr, float)  # typed from the field
    with pytest.raises(ValueError, match="unknown setting 'stpes'; known: batch_size, clip"):
        cfg.with_overrides(["stpes=5"])
    with pytest.raises(ValueError, match="steps='many': expected an int"):
        cfg.with_overrides(["steps=many"])
    with pytest.raises(ValueError, match="flag='yes': expected a bool"):
        cfg.with_overrides(["flag=yes"])
    with pytest.raises(ValueError, match="not key=value"):
        cfg.with_overrides(["steps"])
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        cfg.with_overrides(["steps=0"])
    with pytest.raises(TypeError, match="steps must be an int, got '5'"):
        replace(cfg, steps="5")


def test_cli_run_report_resume(tmp_path, capsys):
    out = tmp_path / "g"
    args = ["run", "gaussians", "--preset", "smoke", "--out", str(out), "--no-progress",
            "steps=20", "eval_every=10", "ckpt_every=10"]
    assert cli.main(args) == 0
    for name in ("results.md", "curves.png", "fig5_NAN.png", "fig6_NAH.png", "config.json"):
        assert (out / name).exists(), name
    text = (out / "results.md").read_text()
    assert "| tanh | 1 |" in text and "test error % (paper)" in text
    final = json.loads((out / "NAN" / "seed0" / "final.json").read_text())
    assert 0 <= final["test_error"] <= 100
    assert cli.main(args) == 2  # finished runs are not overwritten without --resume
    assert "holds finished or partial runs" in capsys.readouterr().err
    mtime = (out / "NAN" / "seed0" / "final.json").stat().st_mtime
    assert cli.main([*args, "--resume"]) == 0
    assert (out / "NAN" / "seed0" / "final.json").stat().st_mtime == mtime  # kept, not redone
    assert cli.main(["report", str(out)]) == 0
    assert cli.main(["run", "nope"]) == 2
    assert cli.main(["run", "gaussians", "--out", str(tmp_path / "x"), "bogus=1"]) == 2
    assert cli.main(["list"]) == 0
    assert "unique-count" in capsys.readouterr().out


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NOISYACT_FUSED": "eager"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "noisyact", "run", "gaussians", "--preset", "smoke", "--out", str(out),
           "--no-progress", "rows=NAN", "steps=20", "eval_every=10", "ckpt_every=10"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((out / "NAN" / "seed0" / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"] is True
    assert json.loads((out / "config.json").read_text())["world_size"] == 2


def test_ptb_pipeline_on_fixture(tmp_path):
    from noisyact.experiments import ptb

    data = os.path.join(os.path.dirname(__file__), "data", "ptb")
    ids, vocab = ptb.tokenize(ptb.load_text(data))
    assert "<eos>" in vocab and ids["train"].max() < len(vocab)
    b = ptb.batchify(torch.arange(103), 4)
    assert b.shape == (25, 4) and b[1, 0] == 1 and b[0, 1] == 25  # columns of consecutive text
    out = tmp_path / "ptb"
    assert cli.main(["run", "ptb", "--preset", "smoke", "--data-dir", data, "--out", str(out),
                     "--no-progress", "rows=reference,NAH", "epochs=1"]) == 0
    final = json.loads((out / "NAH" / "seed0" / "final.json").read_text())
    assert 1 < final["test_ppl"] < 100 and final["train_tokens_per_s"] > 0
    task = ptb.PTBTask("NAH", replace(ptb.PRESETS["smoke"], data_dir=data), 0)
    assert task.lr_at(0, 1.0) == 1.0 and task.lr_at(task.steps_per_epoch, 1.0) == 0.5


def test_ptb_factorial_rows_and_training_text_in_eval_mode(tmp_path):
    """Issue 32: alpha-only is NAN without noise (c = 0), noise-only NAN with α = 1; every
    validation also logs the perplexity of a fixed training sample in eval mode."""
    from noisyact.experiments import ptb

    data = os.path.join(os.path.dirname(__file__), "data", "ptb")
    cfg = replace(ptb.PRESETS["smoke"], data_dir=data)
    def units(row):
        rnn = ptb.PTBTask(row, cfg, 0).build_model().rnn
        return [m for n, m in rnn.named_modules() if n.count(".") == 1]

    assert len(units("alpha-only")) == 6
    assert all(u.c == 0.0 and u.alpha > 1.0 and u.variant == "NAN" for u in units("alpha-only"))
    assert all(u.c == 0.5 and u.alpha == 1.0 and u.variant == "NAN" for u in units("noise-only"))
    out = tmp_path / "ptb"
    assert cli.main(["run", "ptb", "--preset", "smoke", "--data-dir", data, "--out", str(out),
                     "--no-progress", "rows=noise-only", "epochs=1", "train_eval_tokens=40"]) == 0
    records = [json.loads(line) for line in (out / "noise-only" / "seed0" / "metrics.jsonl")
               .read_text().splitlines()]
    evals = [r for r in records if "valid_ppl" in r]
    assert evals and all(r["train_eval_ppl"] > 1 for r in evals)
    task = ptb.PTBTask("noise-only", replace(cfg, train_eval_tokens=40), 0)
    assert task.eval_data["train_eval"].numel() == 40 - 40 % cfg.eval_batch
    assert torch.equal(task.eval_data["train_eval"].t().reshape(-1),
                       ptb.tokenize(ptb.load_text(data))[0]["train"][:40])
    off = ptb.PTBTask("noise-only", cfg.without_monitor(), 0)
    assert off.monitor_splits == () and "train_eval" not in off.eval_data


def test_ptb_missing_data_says_how_to_get_it(tmp_path):
    from noisyact.experiments import ptb

    with pytest.raises(ValueError, match=r"ptb.train.txt is missing.*noisyact\[ptb\]"):
        ptb.load_text(str(tmp_path))
    (tmp_path / "ptb.train.txt").write_text("a b\n")
    (tmp_path / "ptb.valid.txt").write_text("a c\n")
    (tmp_path / "ptb.test.txt").write_text("a\n")
    with pytest.raises(ValueError, match="not in the training text"):
        ptb.tokenize(ptb.load_text(str(tmp_path)))


def test_run_log_shows_counts_as_integers():
    """The per-run log line: ``plateau_exit=10000``, not ``1e+04``; other values to 4 digits."""
    from noisyact.experiments.base import _number

    assert [_number(v) for v in (10000.0, 2250, 0.26, 55.58, 1 / 3, float("nan"))] == [
        "10000", "2250", "0.26", "55.58", "0.3333", "nan"]
