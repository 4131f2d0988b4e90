"""A run folder is one experiment with one set of settings, written by one process at a time.

Each test is a case that mixed, mislabelled or lost results before run folders were checked.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from noisyact import cli, noise
from noisyact.experiments import get, run_experiment
from noisyact.training import load_checkpoint
from noisyact.training.checkpoint import CheckpointError, atomic_save
from noisyact.training.runfolder import LOCK_NAME, RunFolder, RunFolderError, provenance

SMOKE = ["--preset", "smoke", "--no-progress", "rows=tanh", "steps=20", "eval_every=10",
         "ckpt_every=10"]


def _run(capsys, out, *extra):
    capsys.readouterr()
    rc = cli.main(["run", "gaussians", "--out", str(out), *SMOKE, *extra])
    return rc, capsys.readouterr().err


def test_a_refused_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "D"
    assert _run(capsys, out, "lr=0.3")[0] == 0
    before = (out / "config.json").read_bytes()
    rc, err = _run(capsys, out)  # default lr: other settings
    assert rc == 2 and "other settings" in err and "lr: 0.3 in the folder, 0.01 now" in err
    assert "--overwrite" in err
    assert (out / "config.json").read_bytes() == before  # not rewritten
    rc, err = _run(capsys, out, "--resume")  # resuming with other settings: refused too
    assert rc == 2 and "other settings" in err
    assert json.loads((out / "config.json").read_text())["settings"]["lr"] == 0.3
    assert "lr=0.3" in (out / "results.md").read_text()


def test_overwrite_starts_over(tmp_path, capsys):
    out = tmp_path / "D"
    assert _run(capsys, out, "lr=0.3")[0] == 0
    assert _run(capsys, out, "--overwrite")[0] == 0
    assert json.loads((out / "config.json").read_text())["settings"]["lr"] == 0.01
    assert "lr=0.01" in (out / "results.md").read_text()
    rc, err = _run(capsys, out, "--overwrite", "--resume")
    assert rc == 2 and "choose one" in err


def test_first_seed_runs_fresh_seeds_in_their_own_folder(tmp_path, capsys):
    """--first-seed K: seeds K, K+1, ... (a replication with fresh seeds); the folder remembers
    K, refuses other seeds mixed in, and its published command reproduces it."""
    from noisyact.experiments import publish

    out = tmp_path / "D"
    assert _run(capsys, out, "--first-seed", "3", "--seeds", "2")[0] == 0
    assert sorted(d.name for d in (out / "tanh").iterdir()) == ["seed3", "seed4"]
    config = json.loads((out / "config.json").read_text())
    assert config["first_seed"] == 3 and config["seeds"] == 2
    ref = tmp_path / "R"  # seed 3 of a folder that starts at 0 is the same run
    assert _run(capsys, ref, "--seeds", "4")[0] == 0
    a, b = (json.loads((d / "tanh" / "seed3" / "final.json").read_text()) for d in (out, ref))
    a.pop("train_tokens_per_s", None), b.pop("train_tokens_per_s", None)
    assert a == b
    rc, err = _run(capsys, out, "--resume", "--seeds", "3")  # seeds 0-2 would mix in
    assert rc == 2 and "other settings (first_seed: 3 in the folder, 0 now)" in err
    assert _run(capsys, out, "--resume", "--first-seed", "3", "--seeds", "3")[0] == 0
    assert (out / "tanh" / "seed5" / "final.json").exists()
    pub = publish.load(out)
    assert len(pub.finals()["tanh"]) == 3
    assert "--seeds 3 --first-seed 3 --out results/D" in pub.command()
    rc, err = _run(capsys, tmp_path / "E", "--first-seed", "-1")
    assert rc == 2 and "first_seed must be an integer >= 0, got -1" in err


def test_a_partial_run_is_not_restarted_without_resume(tmp_path, capsys):
    out = tmp_path / "D"
    exp = get("gaussians")
    cfg = replace(exp.presets["smoke"], rows=("tanh",), steps=20, eval_every=10, ckpt_every=10)
    from noisyact.training import train

    run_dir = out / "tanh" / "seed0"
    RunFolder(out).write_config({"experiment": "gaussians", "preset": "smoke", "seeds": 1,
                                 "settings": cfg.to_dict(), "provenance": provenance()})
    train(exp.make_task("tanh", cfg, 0), exp.train_config(cfg, 0), run_dir, progress=False,
          stop_at=10)
    metrics = (run_dir / "metrics.jsonl").read_text()
    ckpt = (run_dir / "checkpoint.pt").read_bytes()
    rc, err = _run(capsys, out)
    assert rc == 2 and "finished or partial runs (tanh/seed0)" in err and "--resume" in err
    assert (run_dir / "metrics.jsonl").read_text() == metrics  # not emptied
    assert (run_dir / "checkpoint.pt").read_bytes() == ckpt  # not overwritten
    assert _run(capsys, out, "--resume")[0] == 0
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 20


def test_a_folder_belongs_to_one_experiment(tmp_path, capsys):
    out = tmp_path / "D2"
    assert _run(capsys, out)[0] == 0
    capsys.readouterr()
    rc = cli.main(["run", "unique-count", "--preset", "smoke", "--out", str(out),
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds a 'gaussians' run, not 'unique-count'" in err
    assert json.loads((out / "config.json").read_text())["experiment"] == "gaussians"


def test_a_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "D"
    out.mkdir()
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process holds the folder
        os.write(fd, b"4242")
        rc, err = _run(capsys, out)
        assert rc == 2 and "in use by another noisyact process (pid 4242)" in err
        assert not (out / "config.json").exists()
    finally:
        os.close(fd)
    assert _run(capsys, out)[0] == 0  # released: the run goes ahead


def test_a_resume_under_another_noise_source_is_refused(tmp_path, capsys):
    out = tmp_path / "D"
    exp = get("gaussians")
    overrides = ["rows=tanh", "steps=20", "eval_every=10", "ckpt_every=10"]
    run_experiment(exp, "smoke", out=out, overrides=overrides, progress=False)
    prov = json.loads((out / "config.json").read_text())["provenance"]
    assert prov["noise_source"] == "kernel" and prov["fused_mode"] == "eager"
    assert prov["torch"] == torch.__version__
    noise.set_noise_source("torch")
    with pytest.raises(RunFolderError, match="noise_source: 'kernel' in the folder, 'torch' now"):
        run_experiment(exp, "smoke", out=out, overrides=overrides, progress=False, resume=True)


def test_a_damaged_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "checkpoint.pt"
    atomic_save({"model": {"w": torch.arange(4096.0)}, "step": 3}, p)
    data = bytearray(p.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # 64 bytes inside the tensor data
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint.pt is damaged"):
        load_checkpoint(p)
    atomic_save({}, p)
    with pytest.raises(CheckpointError, match="not a noisyact training checkpoint"):
        load_checkpoint(p, required=("model", "step"))


def test_files_follow_the_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "D"
        assert _run(capsys, out)[0] == 0
    finally:
        os.umask(old)
    for name in ("config.json", "results.md", "tanh/seed0/final.json",
                 "tanh/seed0/checkpoint.pt"):
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == 0o644, (name, oct(mode))


def test_config_records_what_determines_the_numbers(tmp_path, capsys, monkeypatch):
    out = tmp_path / "D"
    monkeypatch.setattr("sys.argv", ["/venv/bin/noisyact", "run", "gaussians", "--out", "a b"])
    assert _run(capsys, out, "--seeds", "2")[0] == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seeds"] == 2 and cfg["experiment"] == "gaussians" and cfg["preset"] == "smoke"
    assert set(cfg["provenance"]) >= {"noise_source", "fused_mode", "torch", "noisyact",
                                      "commit"}
    assert cfg["command"] == "noisyact run gaussians --out 'a b'"  # as a user would type it
    assert cfg["created"].endswith("Z")
    timing = json.loads((out / "tanh" / "seed1" / "timing.json").read_text())
    assert timing["wall_s"] > 0 and timing["finished_at"].endswith("Z")


@pytest.mark.slow
def test_parallel_jobs_give_the_results_of_one_process(tmp_path):
    exp = get("gaussians")
    overrides = ["rows=tanh,NAN", "steps=20", "eval_every=10", "ckpt_every=10"]
    lines = []
    for jobs in (1, 2):
        run_experiment(exp, "smoke", seeds=2, jobs=jobs, out=tmp_path / f"j{jobs}",
                       overrides=overrides, progress=False, log=lines.append)
    assert len(lines) == 8  # one line per (row, seed), as each finishes
    for row in ("tanh", "NAN"):
        for seed in (0, 1):
            a, b = (json.loads((tmp_path / f"j{j}" / row / f"seed{seed}" / "final.json")
                               .read_text()) for j in (1, 2))
            assert a == b, (row, seed)


KILLED_PARENT = """
import multiprocessing, os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from noisyact.training.runner import exit_with_parent

if __name__ == "__main__":
    init = exit_with_parent if sys.argv[1] == "watch" else None
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init)
    with open(sys.argv[2], "w") as f:
        f.write(str(pool.submit(os.getpid).result()))
    pool.submit(time.sleep, 60)
    os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` of `noisyact run --jobs 2`
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not alive
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("mode", ["watch", "none"])
def test_a_worker_ends_with_its_killed_parent(tmp_path, mode):
    script = tmp_path / "parent.py"
    script.write_text(KILLED_PARENT)
    pid_file = tmp_path / "worker.pid"
    subprocess.run([sys.executable, str(script), mode, str(pid_file)], timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = int(pid_file.read_text())
    # the watcher ends its worker within a second; the control needs only to outlive that
    deadline = time.monotonic() + (15 if mode == "watch" else 3)
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        # without the watcher the orphan goes on (the control that shows the test can fail)
        assert _alive(worker) == (mode == "none")
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_seeds_added_after_results_are_recorded_and_shown(tmp_path, capsys):
    """Issue 32: a resume that adds seeds to a folder with finished runs records it in
    config.json, and the folder's section in the results page says so."""
    from noisyact.experiments import publish

    out = tmp_path / "D"
    assert _run(capsys, out, "--seeds", "1")[0] == 0
    assert "seeds_added" not in json.loads((out / "config.json").read_text())
    assert _run(capsys, out, "--seeds", "3", "--resume")[0] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["seeds"] == 3
    assert config["seeds_added"] == [{"seeds": [1, 3], "at": config["seeds_added"][0]["at"],
                                      "runs_finished_before": 1}]
    text = publish.section(publish.load(out), tmp_path)
    assert "Seeds 1-2 were added on" in text and "after 1 runs had finished" in text
