"""What every experiment is: presets, rows, a task per (row, seed), and its report."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..anneal import NoiseAnnealer
from ..training.checkpoint import atomic_write_json
from ..training.distributed import DistInfo, barrier, setup_distributed
from ..training.report import collect, plot_curves, results_table, write_results
from ..training.trainer import TrainConfig, train

PRESETS = ("smoke", "quick", "paper")


def batch_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of one training batch: a pure function of (run seed, step, rank), so a
    resumed run draws exactly the batches of an uninterrupted one."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + rank)


def detach_state(state: Any) -> Any:
    """A recurrent state cut from the graph (truncated BPTT); None stays None."""
    return None if state is None else tuple(s.detach() for s in state)


class BaseTask:
    """Defaults for the optional parts of :class:`noisyact.training.Task`."""

    def annealer(self, model: nn.Module) -> NoiseAnnealer | None:
        return None

    def lr_at(self, step: int, base_lr: float) -> float:
        return base_lr


class ClassificationTask(BaseTask):
    """Cross-entropy training and error % / NLL evaluation on fixed ``eval_sets[split]``."""

    eval_sets: dict[str, tuple[Tensor, Tensor]]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        dev = next(model.parameters()).device
        return nn.functional.cross_entropy(model(x.to(dev)), y.to(dev))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        model.eval()
        x, y = self.eval_sets[split]
        dev = next(model.parameters()).device
        logits = torch.cat([model(xb.to(dev)).cpu() for xb in x.split(1000)])
        return {"error": 100.0 * (logits.argmax(1) != y).float().mean().item(),
                "nll": nn.functional.cross_entropy(logits, y).item()}


@dataclass
class Experiment:
    """A paper experiment: presets (smoke, quick, paper), rows, metrics and the paper's numbers.

    ``task`` builds the task of a (row, seed); subclasses may add figures in :meth:`figures`.
    """

    name: str
    description: str
    presets: dict[str, dict[str, Any]]
    rows: tuple[str, ...]
    columns: list[tuple[str, str]]  # (final.json key, label) shown in results.md
    curve: tuple[str, str]  # (metrics.jsonl key, label) plotted against updates
    paper: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: str = ""
    task: Callable[[str, dict[str, Any], int], Any] | None = None  # (row, cfg, seed) -> task

    def make_task(self, row: str, cfg: dict[str, Any], seed: int) -> Any:
        """The task of one (row, seed)."""
        if self.task is None:
            raise NotImplementedError(f"{self.name}: no task class")
        return self.task(row, cfg, seed)

    def train_config(self, cfg: dict[str, Any], seed: int) -> TrainConfig:
        keys = TrainConfig.__dataclass_fields__.keys()
        return TrainConfig(**{k: v for k, v in cfg.items() if k in keys and k != "seed"},
                           seed=seed)

    def figures(self, out_dir: Path, cfg: dict[str, Any]) -> list[str]:
        """Extra figures (markdown lines) made after all rows finished."""
        return []


def parse_overrides(cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings, typed like the preset's value (rows: comma-separated)."""
    cfg = dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        if key not in cfg:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(cfg))}")
        old = cfg[key]
        try:
            if isinstance(old, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value: Any = raw.lower() in ("true", "1")
            elif isinstance(old, int):
                value = int(raw)
            elif isinstance(old, float):
                value = float(raw)
            elif isinstance(old, list | tuple):
                value = [v.strip() for v in raw.split(",") if v.strip()]
            elif old is None:
                value = raw
            else:
                value = type(old)(raw)
        except ValueError:
            raise ValueError(f"{key}={raw!r}: expected a {type(old).__name__}") from None
        cfg[key] = value
    return cfg


def run_experiment(exp: Experiment, preset: str = "quick", *, seeds: int | None = None,
                   out: str | Path | None = None, device: str = "cpu", resume: bool = False,
                   overrides: Sequence[str] = (), progress: bool = True,
                   log: Any = print) -> Path:
    """Train every row × seed of ``exp`` and write ``results.md`` and plots; return the folder.

    Finished (row, seed) runs are kept; with ``resume`` an interrupted run continues from its last
    checkpoint. Under ``torchrun`` every row runs data-parallel across the processes.
    """
    if preset not in exp.presets:
        raise ValueError(f"preset must be one of {', '.join(exp.presets)}, got {preset!r}")
    cfg = parse_overrides(exp.presets[preset], overrides)
    n_seeds = int(seeds if seeds is not None else cfg.get("seeds", 1))
    if n_seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {n_seeds}")
    rows = list(cfg.get("rows") or exp.rows)
    unknown = [r for r in rows if r not in exp.rows]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {list(exp.rows)}")
    out_dir = Path(out or f"runs/{exp.name}-{preset}")
    dist = setup_distributed(device)
    config = {"experiment": exp.name, "preset": preset, "seeds": n_seeds, "settings": cfg,
              "world_size": dist.world_size}
    cfg_path = out_dir / "config.json"
    if dist.is_main:
        if resume and cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if old.get("settings") != json.loads(json.dumps(cfg)):
                raise ValueError(f"{cfg_path} holds other settings; use another --out or drop "
                                 "--resume")
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(config, cfg_path)
    for row in rows:
        for seed in range(n_seeds):
            run_dir = out_dir / row / f"seed{seed}"
            if (run_dir / "final.json").exists():
                if not resume:
                    raise FileExistsError(f"{run_dir} is already finished; use --resume to keep "
                                          "finished runs or choose another --out")
                continue
            task = exp.make_task(row, cfg, seed)
            try:
                final = train(task, exp.train_config(cfg, seed), run_dir, dist=dist,
                              resume=resume, progress=progress, desc=f"{row} seed {seed}")
            except FloatingPointError as err:  # a diverged seed is a result, not a crash
                final = {"failed": str(err)}
                if dist.is_main:
                    atomic_write_json(final, run_dir / "final.json")
                    log(f"[{exp.name}] {row} seed {seed}: FAILED ({err})")
                continue
            if dist.is_main:
                shown = ", ".join(f"{k}={final[k]:.4g}" for k, _ in exp.columns
                                  if isinstance(final.get(k), int | float))
                log(f"[{exp.name}] {row} seed {seed}: {shown}")
    barrier(dist)
    if dist.is_main:
        write_report(exp, out_dir, cfg)
    return out_dir


def write_report(exp: Experiment, out_dir: Path, cfg: dict[str, Any] | None = None) -> Path:
    """(Re)write ``results.md`` and the learning-curve plot of a run folder."""
    if cfg is None:
        cfg = json.loads((out_dir / "config.json").read_text())["settings"]
    rows = list(cfg.get("rows") or exp.rows)
    results = collect(out_dir, rows)
    body = [exp.description, results_table(results, exp.columns, exp.paper)]
    png = plot_curves(results, exp.curve[0], exp.curve[1], out_dir / "curves.png",
                      title=exp.name)
    if png is not None:
        body.append(f"![learning curves]({png.name})")
    body += exp.figures(out_dir, cfg)
    if exp.notes:
        body.append(exp.notes)
    settings = ", ".join(f"{k}={v}" for k, v in cfg.items())
    body.append(f"Settings: {settings}")
    return write_results(out_dir, f"{exp.name}: results", body)


__all__ = [
    "PRESETS",
    "BaseTask",
    "ClassificationTask",
    "DistInfo",
    "Experiment",
    "batch_generator",
    "parse_overrides",
    "run_experiment",
    "write_report",
]
