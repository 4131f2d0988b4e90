"""Issue 19: settings, data, folders and environment checked before any training; every such
error is one `noisyact: error: ...` line with exit status 2, and a refused run leaves no folder."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from noisyact import cli
from noisyact.experiments import ptb
from noisyact.experiments import translation as mt

DATA = Path(__file__).parent / "data"


def _run(capsys, *args):
    """``noisyact ARGS`` in-process: (exit status, stderr)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _one_error_line(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("noisyact: error: "), err[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _data_args(exp):
    if exp == "ptb":
        return ["--data-dir", DATA / "ptb"]
    if exp == "translation":
        return ["--data-dir", DATA / "multi30k"]
    return []


# (experiment, bad setting, what the message must say); steps is "epochs" in ptb
BAD_SETTINGS = [
    ("unique-count", "c_fixed=-1", "c_fixed must be >= 0, got -1.0"),
    *[(exp, "batch_size=0", "batch_size must be >= 1, got 0")
      for exp in ("unique-count", "gaussians", "ptb", "learning-to-execute",
                  "associative-recall", "translation", "captioning")],
    *[(exp, "steps=-5", "steps must be >= 1, got -5")
      for exp in ("unique-count", "gaussians", "learning-to-execute", "associative-recall",
                  "translation", "captioning")],
    ("ptb", "epochs=-5", "epochs must be >= 1, got -5"),
    ("unique-count", "lr=nan", "lr must be a finite number"),
    ("ptb", "dropout=1.5", "dropout must be in [0, 1)"),
]


@pytest.mark.parametrize(("exp", "setting", "says"), BAD_SETTINGS,
                         ids=[f"{e}-{s}" for e, s, _ in BAD_SETTINGS])
def test_bad_setting_fails_at_once_and_leaves_no_folder(tmp_path, capsys, exp, setting, says):
    out = tmp_path / "out"
    rc, err = _run(capsys, "run", exp, "--preset", "smoke", "--out", out, "--no-progress",
                   *_data_args(exp), setting)
    assert rc == 2
    _one_error_line(err, says)
    assert not out.exists()


def _ptb_dir(tmp_path, **texts):
    d = tmp_path / "ptb"
    d.mkdir()
    for split in ("train", "valid", "test"):
        (d / f"ptb.{split}.txt").write_bytes(
            texts.get(split, (DATA / "ptb" / f"ptb.{split}.txt").read_bytes()))
    return d


@pytest.mark.parametrize(("split", "data", "says"), [
    ("valid", b"", "is empty"),
    ("train", b"  \n\n", "is empty"),
    ("test", b"the \xff\xfe cat\n", "is not UTF-8 text (byte 0xff at offset 4)"),
])
def test_ptb_data_errors_name_the_file(tmp_path, capsys, split, data, says):
    d = _ptb_dir(tmp_path, **{split: data})
    out = tmp_path / "out"
    rc, err = _run(capsys, "run", "ptb", "--preset", "smoke", "--data-dir", d, "--out", out,
                   "--no-progress")
    assert rc == 2
    _one_error_line(err, str(d / f"ptb.{split}.txt"), says)
    assert not out.exists()


def test_ptb_too_short_names_the_split_and_setting(tmp_path):
    d = _ptb_dir(tmp_path, valid=b"the cat\n")
    with pytest.raises(ValueError, match=r"ptb.valid.txt \(eval_batch 10\) has 3 tokens"):
        ptb.PTBTask("reference", replace(ptb.PRESETS["smoke"], data_dir=str(d)), 0)


def _mt_dir(tmp_path, name, data):
    d = tmp_path / "mt"
    d.mkdir()
    for f in (DATA / "multi30k").iterdir():
        if f.name != "README.md":
            (d / f.name).write_bytes(f.read_bytes())
    (d / name).write_bytes(data)
    return d


@pytest.mark.parametrize(("name", "data", "says"), [
    ("val.fr", b"", "is empty"),
    ("train.en", b"a dog \xc3\x28 runs\n", "is not UTF-8 text (byte 0xc3"),
    ("test_2016_flickr.en.gz", b"not gzip", "cannot be read"),
])
def test_multi30k_data_errors_name_the_file(tmp_path, capsys, name, data, says):
    d = _mt_dir(tmp_path, name, data)
    if name.endswith(".gz"):
        (d / name.removesuffix(".gz")).unlink()
    out = tmp_path / "out"
    rc, err = _run(capsys, "run", "translation", "--preset", "smoke", "--data-dir", d,
                   "--out", out, "--no-progress")
    assert rc == 2
    _one_error_line(err, str(d / name), says)
    assert not out.exists()


def test_out_under_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "run"
    rc, err = _run(capsys, "run", "unique-count", "--preset", "smoke", "--out", out,
                   "--no-progress", "rows=reference")
    assert rc == 2
    _one_error_line(err, "cannot write to --out", str(out))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_out_is_a_clear_error(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        rc, err = _run(capsys, "run", "unique-count", "--preset", "smoke", "--out",
                       parent / "run", "--no-progress", "rows=reference")
    finally:
        parent.chmod(0o700)
    assert rc == 2
    _one_error_line(err, "cannot write to --out")


def test_damaged_checkpoint_on_resume_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", "unique-count", "--preset", "smoke", "--out", out, "--no-progress",
            "rows=reference", "steps=10", "eval_every=5", "ckpt_every=5"]
    assert _run(capsys, *args)[0] == 0
    run = out / "reference" / "seed0"
    (run / "final.json").unlink()  # as if killed after its last checkpoint
    ck = run / "checkpoint.pt"
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ck.write_bytes(bytes(data))
    rc, err = _run(capsys, *args, "--resume")
    assert rc == 2
    _one_error_line(err, f"checkpoint {ck} is damaged")


def _finished_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, "run", "unique-count", "--preset", "smoke", "--out", out,
                "--no-progress", "rows=reference", "steps=4", "eval_every=2",
                "ckpt_every=2")[0] == 0
    return out


@pytest.mark.parametrize("name", ["config.json", "reference/seed0/final.json"])
def test_report_of_a_truncated_json_names_the_file(tmp_path, capsys, name):
    out = _finished_folder(tmp_path, capsys)
    f = out / name
    f.write_text(f.read_text()[:20])
    rc, err = _run(capsys, "report", out)
    assert rc == 2
    _one_error_line(err, str(f), "is damaged")


def test_results_md_shows_the_seeds_run(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", "unique-count", "--preset", "smoke", "--out", out, "--no-progress",
            "rows=reference", "steps=4", "eval_every=2", "ckpt_every=2"]
    assert _run(capsys, *args, "--seeds", "2")[0] == 0
    settings = (out / "results.md").read_text().split("Settings: ")[1]
    assert "seeds=2" in settings and "seeds=1" not in settings
    assert _run(capsys, "report", out)[0] == 0
    settings = (out / "results.md").read_text().split("Settings: ")[1]
    assert "seeds=2" in settings and "seeds=1" not in settings


def _noisyact(*args, **env):
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "noisyact", *map(str, args)], env=full,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("var", "choices"), [("NOISYACT_NOISE", "kernel, torch"),
                                              ("NOISYACT_FUSED", "compile, eager, off")])
def test_bad_environment_value(tmp_path, var, choices):
    listed = _noisyact("list", **{var: "bogus"})
    assert listed.returncode == 0 and "unique-count" in listed.stdout, listed.stderr[-2000:]
    out = tmp_path / "out"
    proc = _noisyact("run", "unique-count", "--preset", "smoke", "--out", out, "--no-progress",
                     **{var: "bogus"})
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr, var, choices, "'bogus'")
    assert "Traceback" not in proc.stderr, line
    assert not out.exists()


def test_environment_value_is_read_at_first_use(monkeypatch):
    from noisyact import compiler, noise

    monkeypatch.setitem(noise._state, "source", None)
    monkeypatch.setitem(compiler._state, "mode", None)
    monkeypatch.setenv("NOISYACT_NOISE", "bogus")
    monkeypatch.setenv("NOISYACT_FUSED", "bogus")
    with pytest.raises(ValueError, match="NOISYACT_NOISE must be one of kernel, torch"):
        noise.noise_source()
    with pytest.raises(ValueError, match="NOISYACT_FUSED must be one of"):
        compiler.fused_mode()
    noise.set_noise_source("torch")  # an explicit choice wins over the environment
    compiler.set_fused_mode("off")
    assert noise.noise_source() == "torch" and compiler.fused_mode() == "off"
    with pytest.raises(ValueError, match="source must be one of"):
        noise.set_noise_source("bogus")
    with pytest.raises(ValueError, match="mode must be one of"):
        compiler.set_fused_mode("bogus")
    monkeypatch.setitem(noise._state, "source", None)
    monkeypatch.setitem(compiler._state, "mode", None)
    monkeypatch.setenv("NOISYACT_NOISE", "torch")
    monkeypatch.setenv("NOISYACT_FUSED", "eager")
    assert noise.noise_source() == "torch" and compiler.fused_mode() == "eager"


def _big_ptb(tmp_path, n_tokens):
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(50)]

    def text(n):
        ids = torch.randint(0, 50, (n,), generator=g).tolist()
        return "".join(" ".join(words[i] for i in ids[k: k + 20]) + "\n"
                       for k in range(0, n, 20))

    d = tmp_path / "bigptb"
    d.mkdir()
    for split, n in (("train", n_tokens), ("valid", n_tokens // 10), ("test", n_tokens // 10)):
        (d / f"ptb.{split}.txt").write_text(text(n))
    return d


def test_ptb_smoke_is_bounded_whatever_the_corpus(tmp_path):
    cfg = replace(ptb.PRESETS["smoke"], data_dir=str(_big_ptb(tmp_path, 200_000)))
    task = ptb.PTBTask("reference", cfg, 0)
    assert task.train_data.numel() <= 4000
    assert task.steps <= 2 * 4000 // (cfg.batch_size * cfg.bptt)
    for split in ("valid", "test"):
        assert task.eval_data[split].numel() <= 2000
    tc = ptb.EXPERIMENT.train_config(cfg, 0)
    assert tc.steps == task.steps


def test_translation_smoke_reads_only_what_it_uses(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    n = 5000
    for stem in ("train", "val", "test_2016_flickr"):
        for lang in ("en", "fr"):
            (d / f"{stem}.{lang}").write_text("".join(f"s{i} w{i % 7}\n" for i in range(n)))
    cfg = replace(mt.PRESETS["smoke"], data_dir=str(d))
    corpus = mt.load_corpus(cfg)
    assert len(corpus["train"][0]) == cfg.train_limit == len(corpus["train"][1])
    assert len(corpus["valid"][0]) == cfg.eval_size
    (d / "train.fr").write_text("".join(f"s{i}\n" for i in range(n - 1)))
    with pytest.raises(ValueError, match="not a parallel corpus"):  # still counts every line
        mt.load_corpus(cfg)


def _flickr8k(tmp_path, n):
    d = tmp_path / "flickr8k"
    d.mkdir()
    names = [f"im{i}.jpg" for i in range(3 * n)]
    (d / "Flickr8k.token.txt").write_text(
        "".join(f"{m}#{j}\tA dog runs {j}\n" for m in names for j in range(5)))
    torch.save({"names": names, "features": torch.ones(3 * n, 4, 8)}, d / "features.pt")
    for k, split in enumerate(("train", "dev", "test")):
        (d / f"Flickr_8k.{split}Images.txt").write_text(
            "".join(m + "\n" for m in names[k * n: (k + 1) * n]))
    return d


def test_captioning_smoke_on_flickr8k_is_bounded(tmp_path):
    from noisyact.experiments import captioning as cap

    cfg = replace(cap.PRESETS["smoke"], dataset="flickr8k", data_dir=str(_flickr8k(tmp_path, 200)))
    task = cap.CaptionTask("reference", cfg, 0)
    for split in ("train", "valid", "test"):
        assert len(task.inputs[split]) == len(task.ids[split]) == getattr(cfg, f"n_{split}")


def test_damaged_flickr8k_features_name_the_file(tmp_path, capsys):
    d = _flickr8k(tmp_path, 2)
    (d / "features.pt").write_bytes((d / "features.pt").read_bytes()[:100])
    out = tmp_path / "out"
    rc, err = _run(capsys, "run", "captioning", "--preset", "smoke", "--out", out,
                   "--no-progress", "dataset=flickr8k", "--data-dir", d)
    assert rc == 2
    _one_error_line(err, str(d / "features.pt"), "cannot be read")
    assert not out.exists()


def test_report_check_reads_each_folders_results_and_final(tmp_path, capsys):
    """Issue 32: `report --check` fails on a folder whose results.md is not its report, or whose
    final.json records another number of updates than its metrics.jsonl."""
    out = _finished_folder(tmp_path, capsys)
    assert _run(capsys, "report", out, "--check")[0] == 0
    results = out / "results.md"
    results.write_text(results.read_text().replace("reference", "referenc", 1))
    rc, err = _run(capsys, "report", out, "--check")
    assert rc == 1 and f"{results} is not the report of its folder" in err
    assert _run(capsys, "report", out)[0] == 0  # the advice: regenerate it
    assert _run(capsys, "report", out, "--check")[0] == 0
    final = out / "reference" / "seed0" / "final.json"
    data = json.loads(final.read_text())
    final.write_text(json.dumps({**data, "steps": data["steps"] + 2}))
    rc, err = _run(capsys, "report", out, "--check")
    assert rc == 1 and "records 6 updates, metrics.jsonl ends at update 4" in err
