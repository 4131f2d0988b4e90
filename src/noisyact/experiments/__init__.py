"""The paper's experiments, by name. Each module holds its data, model, rows and presets."""

from __future__ import annotations

import importlib

from .base import PRESETS, Experiment, run_experiment, write_report

# name -> module; modules are imported on first use so that `noisyact list` stays fast.
_MODULES = {
    "unique-count": "unique_count",
    "gaussians": "gaussians",
    "ptb": "ptb",
    "learning-to-execute": "learning_to_execute",
    "associative-recall": "associative_recall",
    "translation": "translation",
    "captioning": "captioning",
    "ablation": "ablation",
}
DEFAULT = "unique-count"


def names() -> list[str]:
    return list(_MODULES)


def get(name: str) -> Experiment:
    """The experiment registered under ``name``."""
    if name not in _MODULES:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(_MODULES)}")
    return importlib.import_module(f".{_MODULES[name]}", __name__).EXPERIMENT


__all__ = ["DEFAULT", "PRESETS", "Experiment", "get", "names", "run_experiment", "write_report"]
