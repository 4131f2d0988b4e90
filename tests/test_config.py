"""Issue 18: presets are typed configs whose settings dict is exactly the one recorded before.

``tests/data/preset_settings.json`` holds, for every experiment and preset, the settings dict
that the dict-based presets put in ``config.json`` (generated from commit 2d883ee, before the
settings were typed). Run folders compare that dict on ``--resume``, so it must not change by
accident; a deliberate change of a preset updates the file in the same commit (so far: the
ablation's ``alpha-only`` row in its smoke and quick rows; ptb's factorial rows and
``train_eval_tokens``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from noisyact import experiments
from noisyact.experiments import (
    ablation,
    associative_recall,
    captioning,
    gaussians,
    learning_to_execute,
    ptb,
    translation,
    unique_count,
)
from noisyact.experiments.config import ExperimentConfig
from noisyact.experiments.publish import _value

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "tests" / "data" / "preset_settings.json").read_text())
PRESETS = [(name, preset) for name in experiments.names()
           for preset in experiments.get(name).presets]


def _json(d):
    """Types matter (1 and 1.0 are different settings in config.json): compare as JSON text."""
    return json.dumps(d, sort_keys=True)


def test_every_experiment_and_preset_is_recorded():
    assert sorted(RECORDED) == sorted(experiments.names())
    for name in experiments.names():
        assert list(experiments.get(name).presets) == list(RECORDED[name]), name


@pytest.mark.parametrize(("name", "preset"), PRESETS, ids=[f"{n}-{p}" for n, p in PRESETS])
def test_preset_settings_are_the_recorded_dict(name, preset):
    exp = experiments.get(name)
    cfg = exp.presets[preset]
    assert isinstance(cfg, ExperimentConfig) and type(cfg) is exp.config_class
    assert _json(cfg.to_dict()) == _json(RECORDED[name][preset])
    assert exp.config_of(cfg.to_dict()) == cfg  # the recorded settings make the same config
    # the command line publish writes for a folder (every setting as key=value) gives it back
    again = cfg.with_overrides([f"{k}={_value(v)}" for k, v in cfg.to_dict().items()])
    assert again == cfg


def test_committed_run_folders_settings_are_representable():
    """Each committed folder's settings, read as a config, give exactly its settings back (so
    ``--resume`` of the same command finds equal settings)."""
    folders = sorted((ROOT / "results").glob("*/config.json"))
    if not folders:
        pytest.skip("no results/ folder")
    for path in folders:
        config = json.loads(path.read_text())
        exp = experiments.get(config["experiment"])
        cfg = exp.config_of(config["settings"])
        assert _json(cfg.to_dict()) == _json(config["settings"]), path


def test_rows_are_data():
    """Each experiment's rows are the keys of its module's ROWS table, in order."""
    for module in (unique_count, gaussians, ptb, learning_to_execute, associative_recall,
                   translation, captioning, ablation):
        assert tuple(module.ROWS) == module.EXPERIMENT.rows, module.__name__
    assert unique_count.ROWS["NANIL-authors-annealed"].variant == "NANIL-authors"
    assert unique_count.ROWS["NANIL-authors-annealed"].annealed
    assert not captioning.ROWS["NAH-nodrop"].dropout and captioning.ROWS["NAH"].dropout
    assert tuple(ablation.ROWS) == ablation.ABLATION_ROWS + ablation.GRID_ROWS
    cell = ablation.ROWS[ablation.grid_row(5.0, 1.0)]
    assert (cell.c, cell.alpha) == (5.0, (1.0, 1.0))


def test_a_group_of_settings_is_flattened_with_its_prefix():
    """The ablation's ptb settings: ``ptb_<setting>`` in the dict and on the command line,
    checked with that name; the group's rows and seeds are the run's."""
    smoke = ablation.PRESETS["smoke"]
    assert smoke.ptb == ptb.PRESETS["smoke"].without_monitor()
    d = smoke.to_dict()
    assert d["ptb_epochs"] == ptb.PRESETS["smoke"].epochs and "ptb_rows" not in d
    assert "ptb_max_train_tokens" not in ablation.PRESETS["quick"].to_dict()  # optional, None
    cfg = smoke.with_overrides(["task=ptb", "ptb_epochs=1", "ptb_max_train_tokens=1000"])
    assert (cfg.task, cfg.ptb.epochs, cfg.ptb.max_train_tokens) == ("ptb", 1, 1000)
    with pytest.raises(ValueError, match="ptb_epochs must be >= 1, got 0"):
        smoke.with_overrides(["ptb_epochs=0"])
    with pytest.raises(ValueError, match="unknown setting 'ptb_rows'"):
        smoke.with_overrides(["ptb_rows=NAN"])


def test_a_config_is_checked_when_made():
    quick = experiments.get("unique-count").presets["quick"]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        replace(quick, batch_size=0)
    with pytest.raises(ValueError, match=r"curriculum_frac must be in \(0, 1\], got 1.5"):
        replace(quick, curriculum_frac=1.5)
    with pytest.raises(TypeError, match="rows must be a comma-separated list"):
        replace(quick, rows="NAN")
    assert replace(quick, lr=1).lr == 1.0 and isinstance(replace(quick, lr=1).lr, float)
    assert replace(quick, rows=["NAN"]).rows == ("NAN",)
