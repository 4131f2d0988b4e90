"""Issue 34: runs that stop when told, refuse what would mix results, and say so in one line.

Each test is a case that mixed results, went on after a signal or printed a traceback before.
The signal cases run a real ``noisyact run`` process; the full-disk cases inject ``ENOSPC`` where
the write happens.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from noisyact import cli
from noisyact.experiments import get, ptb
from noisyact.training import load_checkpoint, train
from noisyact.training.checkpoint import atomic_save
from noisyact.training.runfolder import LOCK_NAME, RunFolder, provenance

SMOKE = ["--preset", "smoke", "--no-progress", "steps=20", "eval_every=10", "ckpt_every=10"]


def _run(capsys, out, *extra):
    capsys.readouterr()
    rc = cli.main(["run", "gaussians", "--out", str(out), *SMOKE, *extra])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _partial(out: Path, row: str = "tanh", **changes) -> Path:
    """A folder with one run stopped after 10 of 20 steps, as the command line makes it."""
    exp = get("gaussians")
    cfg = replace(exp.presets["smoke"], rows=(row,), steps=20, eval_every=10, ckpt_every=10,
                  **changes)
    RunFolder(out).write_config({"experiment": "gaussians", "preset": "smoke", "seeds": 1,
                                 "settings": cfg.to_dict(), "world_size": 1,
                                 "provenance": provenance()})
    run_dir = out / row / "seed0"
    train(exp.make_task(row, cfg, 0), exp.train_config(cfg, 0), run_dir, progress=False,
          stop_at=10, settings=cfg.to_dict())
    return run_dir


# --- results mixed or changed without a word ---------------------------------------------------

def test_a_hand_edited_config_is_checked_against_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "D"
    run_dir = _partial(out)
    config = json.loads((out / "config.json").read_text())
    config["settings"]["lr"] = 0.02  # the folder now agrees with the command below
    (out / "config.json").write_text(json.dumps(config))
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    rc, err = _run(capsys, out, "rows=tanh", "lr=0.02", "--resume")
    line = _one_line(err)
    assert rc == 2 and "cannot resume" in line and "lr: 0.01 in the checkpoint, 0.02 now" in line
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics  # nothing trained at lr 0.02
    assert _run(capsys, out, "rows=tanh", "lr=0.02", "--overwrite")[0] == 0


def test_a_resume_under_another_world_size_is_refused(tmp_path, capsys):
    out = tmp_path / "D"
    run_dir = _partial(out)
    # the folder of a 2-process torchrun run, resumed by one process
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "world_size": 2}))
    rc, err = _run(capsys, out, "rows=tanh", "--resume")
    assert rc == 2 and "world_size: 2 in the folder, 1 now" in _one_line(err)
    # the checkpoint knows it too, whatever config.json says
    (out / "config.json").write_text(json.dumps(config))
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    atomic_save({**ck, "world_size": 2}, run_dir / "checkpoint.pt")
    rc, err = _run(capsys, out, "rows=tanh", "--resume")
    assert rc == 2 and "world_size: 2 in the checkpoint, 1 now" in _one_line(err)


def test_a_row_named_twice_is_refused(tmp_path, capsys):
    rc, err = _run(capsys, tmp_path / "D", "rows=NAN,tanh,NAN", "--jobs", "2")
    assert rc == 2 and "rows names NAN more than once" in _one_line(err)
    assert not (tmp_path / "D").exists()


def test_a_byte_order_mark_is_not_a_word(tmp_path):
    fixture = Path(__file__).parent / "data" / "ptb"
    bom = tmp_path / "ptb"
    shutil.copytree(fixture, bom)
    for split in ("train", "valid", "test"):
        f = bom / f"ptb.{split}.txt"
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    ids, vocab = ptb.tokenize(ptb.load_text(str(bom)))
    plain_ids, plain_vocab = ptb.tokenize(ptb.load_text(str(fixture)))
    assert "\ufeff" not in "".join(vocab) and vocab == plain_vocab
    assert all((ids[s] == plain_ids[s]).all() for s in ids)


# --- damaged folders --------------------------------------------------------------------------

def test_overwrite_replaces_a_damaged_config(tmp_path, capsys):
    out = tmp_path / "D"
    assert _run(capsys, out, "rows=tanh")[0] == 0
    (out / "config.json").write_text("{bad")
    rc, err = _run(capsys, out, "rows=tanh")
    assert rc == 2 and "is damaged" in _one_line(err) and "--overwrite" in err
    assert _run(capsys, out, "rows=tanh", "--overwrite")[0] == 0  # the advice works
    assert json.loads((out / "config.json").read_text())["experiment"] == "gaussians"


def test_a_config_with_a_bad_field_names_the_file_and_field(tmp_path, capsys):
    out = tmp_path / "D"
    assert _run(capsys, out, "rows=tanh")[0] == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "seeds": "abc"}))
    rc, err = _run(capsys, out, "rows=tanh", "--resume")
    line = _one_line(err)
    assert rc == 2 and str(out / "config.json") in line and "seeds: 'abc'" in line


def test_resume_removes_what_a_killed_write_left(tmp_path, capsys):
    out = tmp_path / "D"
    run_dir = _partial(out)
    left = run_dir / ".checkpoint.pt.x1y2z3.tmp"  # kill -9 during a checkpoint write
    left.write_bytes(b"half a checkpoint")
    assert _run(capsys, out, "rows=tanh", "--resume")[0] == 0
    assert not left.exists() and (run_dir / "final.json").exists()


def test_report_marks_a_partial_folder(tmp_path, capsys):
    out = tmp_path / "D"
    _partial(out)
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    assert "**Partial: 0 of 1 runs have finished**" in (out / "results.md").read_text()
    assert _run(capsys, out, "rows=tanh", "--resume")[0] == 0
    assert "Partial" not in (out / "results.md").read_text()


# --- a full disk ------------------------------------------------------------------------------

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_at_the_lock_leaves_no_lock_and_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("noisyact.training.runfolder.os.pwrite", _no_space)
    out = tmp_path / "new" / "D"
    rc, err = _run(capsys, out, "rows=tanh")
    assert rc == 2 and "cannot write to --out" in _one_line(err)
    assert "No space left on device" in err
    assert not (out / LOCK_NAME).exists() and not (tmp_path / "new").exists()


def test_a_full_disk_at_a_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("noisyact.training.checkpoint.os.fsync", _no_space)
    out = tmp_path / "D"
    rc, err = _run(capsys, out, "rows=tanh")
    line = _one_line(err)
    assert rc == 1 and "No space left on device" in line and "--resume" in line
    assert not list(out.glob("**/.*.tmp"))  # the atomic write removed its temporary file


def test_a_full_disk_at_the_figures_is_one_line(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, fname, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fname))

    monkeypatch.setattr(Figure, "savefig", full)
    rc, err = _run(capsys, tmp_path / "D", "rows=tanh")
    line = _one_line(err)
    assert rc == 1 and "No space left on device" in line and "curves.png" in line


# --- signals and killed workers (real processes) ----------------------------------------------

LONG = ["run", "gaussians", "--preset", "smoke", "--no-progress", "--seeds", "3",
        "rows=tanh,NAN", "steps=20000", "eval_every=10000", "ckpt_every=20", "log_every=20"]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NOISYACT_FUSED": "eager"}
    return subprocess.Popen([sys.executable, "-m", "noisyact", *LONG, "--out", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group, as a terminal's job


def _wait_for_checkpoints(out: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while len(list(out.glob("*/seed*/checkpoint.pt"))) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint in 120 s"
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            cmdline = (stat.parent / "cmdline").read_bytes()
            if b"spawn_main" in cmdline:  # a worker, not multiprocessing's resource tracker
                found.append(int(stat.parent.name))
    return found


def _ends(proc: subprocess.Popen, within: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"still running {within} s after the signal")
    return proc.returncode, err


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize(("jobs", "how", "code"), [
    ("2", "ctrl-c", 130),  # SIGINT to the whole group, as a terminal sends it
    ("2", "sigterm", 143),  # SIGTERM to the parent alone, as `kill` sends it
    ("1", "sigterm", 143),
])
def test_a_signal_stops_all_work_and_says_how_to_continue(tmp_path, jobs, how, code):
    out = tmp_path / "D"
    proc = _start(out, "--jobs", jobs)
    _wait_for_checkpoints(out, int(jobs), proc)
    workers = _children(proc.pid)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    rc, err = _ends(proc, within=30)  # promptly: within 30 s, not after the queued runs
    line = _one_line(err)
    assert rc == code and "stopped by" in line and "--resume" in line
    time.sleep(0.5)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()
                and "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1][:3]]
    # no queued run was started after the signal: at most the ones that were running
    begun = [d for d in out.glob("*/seed*") if any(d.iterdir())]
    assert len(begun) <= int(jobs) and not list(out.glob("*/seed*/final.json"))
    for ck in out.glob("*/seed*/checkpoint.pt"):
        assert load_checkpoint(ck)["step"] > 0  # intact


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_a_killed_worker_is_one_line(tmp_path):
    out = tmp_path / "D"
    proc = _start(out, "--jobs", "2")
    _wait_for_checkpoints(out, 2, proc)
    os.kill(_children(proc.pid)[-1], signal.SIGKILL)
    rc, err = _ends(proc, within=60)
    # multiprocessing's resource tracker may add its own warning about the lock that the
    # killed worker held (it removes it): noisyact's part is one line, and no traceback
    ours = [x for x in err.splitlines() if x.startswith("noisyact")]
    assert "Traceback" not in err and len(ours) == 1, err
    assert rc == 2 and "worker process ended abruptly" in ours[0] and "--resume" in ours[0]
