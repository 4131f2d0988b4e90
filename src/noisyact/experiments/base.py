"""What every experiment is: presets, rows, a task per (row, seed), and its report.

An experiment's settings are a typed, frozen config (:mod:`.config`); its presets are instances
of it and ``key=value`` overrides make a new one. Tasks get that config and read attributes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..training.distributed import DistInfo, barrier, setup_distributed
from ..training.report import (
    RowResult,
    collect,
    partial_note,
    plot_curves,
    results_table,
    write_results,
)
from ..training.runfolder import RunFolder, command_line, provenance
from ..training.runner import RunError, RunSpec, check_resumable, compile_policy, run_all
from ..training.task import Task
from ..training.trainer import TrainConfig
from ..training.verdict import Claim, verdict_table
from .config import ExperimentConfig, check_settings

C = TypeVar("C", bound=ExperimentConfig)

PRESETS = ("smoke", "quick", "paper")


def batch_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of one training batch: a pure function of (run seed, step, rank), so a
    resumed run draws exactly the batches of an uninterrupted one."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + rank)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def rank_slice(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of ``n`` items (data-parallel batches and columns)."""
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


def weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The named parameters that an experiment's initialisation sets: all but the noise
    parameters p of the noisy units, which keep their U(−1, 1) initialisation (§6)."""
    return [(n, w) for n, w in model.named_parameters() if n.rsplit(".", 1)[-1] != "p"]


@torch.no_grad()
def uniform_init_(model: nn.Module, a: float) -> None:
    """Every weight (embeddings and biases included, not p) U(−a, a), as Zaremba's codes do."""
    for _, w in weights(model):
        w.uniform_(-a, a)


def detach_state(state: Any) -> Any:
    """A recurrent state cut from the graph (truncated BPTT); None stays None."""
    return None if state is None else tuple(s.detach() for s in state)




class ClassificationTask(Task):
    """Cross-entropy training and error % / NLL evaluation on fixed ``eval_sets[split]``."""

    eval_sets: dict[str, tuple[Tensor, Tensor]]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        dev = model_device(model)
        return nn.functional.cross_entropy(model(x.to(dev)), y.to(dev))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        model.eval()
        x, y = self.eval_sets[split]
        dev = model_device(model)
        logits = torch.cat([model(xb.to(dev)).cpu() for xb in x.split(1000)])
        return {"error": 100.0 * (logits.argmax(1) != y).float().mean().item(),
                "nll": nn.functional.cross_entropy(logits, y).item()}


@dataclass
class Experiment:
    """A paper experiment: presets (smoke, quick, paper), rows, metrics and the paper's numbers.

    ``presets`` are instances of the experiment's config class (every preset of one class);
    ``task`` builds the task of a (row, seed) from such a config; subclasses may add figures in
    :meth:`figures`.
    """

    name: str
    description: str
    presets: dict[str, ExperimentConfig]
    rows: tuple[str, ...]
    columns: list[tuple[str, str]]  # (final.json key, label) shown in results.md
    curve: tuple[str, str]  # (metrics.jsonl key, label) plotted against updates
    paper: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: str = ""
    task: Callable[[str, Any, int], Any] | None = None  # (row, config, seed) -> task
    # the paper's claims on this experiment, the headline first; judged in every report
    claims: tuple[Claim, ...] = ()
    paper_table: str = ""  # where the paper reports it ("Table 2", "Fig. 9")
    # the run folder (a name under results/) whose verdict on the first claim the README quotes
    headline: str = ""
    # final metrics that are a function of a run's logged records (the task's summarize): the
    # report derives them from metrics.jsonl for runs whose final.json predates them
    from_history: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None

    def complete(self, results: list[RowResult]) -> list[RowResult]:
        """``results`` with :attr:`from_history` metrics filled in where final.json lacks them."""
        if self.from_history is None:
            return results
        for rr in results:
            for i, (final, curve) in enumerate(zip(rr.finals, rr.curves, strict=True)):
                if not final.get("failed"):
                    rr.finals[i] = {**self.from_history(curve), **final}
        return results

    @property
    def config_class(self) -> type[ExperimentConfig]:
        """The class of this experiment's settings (that of its presets)."""
        return type(next(iter(self.presets.values())))

    def config_of(self, settings: dict[str, Any]) -> ExperimentConfig:
        """The config of recorded settings (a run folder's ``config.json``)."""
        return self.config_class.from_dict(settings)

    def make_task(self, row: str, cfg: Any, seed: int) -> Any:
        """The task of one (row, seed)."""
        if self.task is None:
            raise NotImplementedError(f"{self.name}: no task class")
        return self.task(row, cfg, seed)

    def train_config(self, cfg: Any, seed: int, **loop: Any) -> TrainConfig:
        """The loop settings of ``cfg`` (``steps``, ``lr``, ...), ``loop`` replacing some."""
        return TrainConfig(**{**cfg.loop_settings(), **loop}, seed=seed)

    def figures(self, out_dir: Path, cfg: Any) -> list[str]:
        """Extra figures (markdown lines) made after all rows finished; ``cfg``: the run's
        config (:meth:`config_of` its recorded settings)."""
        return []


def report_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a report of a run folder shows, from its ``config.json``: the run's settings
    with ``seeds`` the number of seeds run into the folder (``--seeds`` or a resume with more
    seeds may exceed the preset's)."""
    settings = dict(config["settings"])
    if "seeds" in config:
        settings["seeds"] = int(config["seeds"])
    if config.get("first_seed"):
        settings["first_seed"] = int(config["first_seed"])
    return settings


def preflight(exp: Experiment, cfg: ExperimentConfig, rows: Sequence[str]) -> None:
    """Build every row's task, loop settings and model once, so that a bad setting fails before
    anything trains or is written (``ValueError`` naming the row)."""
    for row in rows:
        try:
            task = exp.make_task(row, cfg, 0)
            exp.train_config(cfg, 0)
            task.build_model()
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ValueError(f"row {row!r}: {exc}") from None


def run_experiment(exp: Experiment, preset: str = "quick", *, seeds: int | None = None,
                   first_seed: int = 0, out: str | Path | None = None, device: str = "cpu",
                   resume: bool = False, overwrite: bool = False, jobs: int = 1,
                   overrides: Sequence[str] = (), progress: bool = True, log: Any = print) -> Path:
    """Train every row × seed of ``exp`` and write ``results.md`` and plots; return the folder.

    Runs go seed by seed (every row's first seed first): seeds ``first_seed`` to
    ``first_seed + seeds - 1`` (a nonzero ``first_seed`` gives a replication with fresh seeds in
    its own folder). The folder is checked before anything is
    written (:class:`~noisyact.training.runfolder.RunFolder`): finished runs are kept and
    interrupted ones continued only with ``resume``; ``overwrite`` deletes an earlier run of the
    folder. ``jobs`` > 1 trains that many (row, seed) runs at once in worker processes, each with
    its share of torch's threads. Under ``torchrun`` every row runs data-parallel across the
    processes. Fused kernels are compiled as :func:`~noisyact.training.runner.compile_policy`
    says.
    """
    with compile_policy():
        return _run_experiment(exp, preset, seeds, first_seed, out, device, resume, overwrite,
                               jobs, overrides, progress, log)


def _run_experiment(exp: Experiment, preset: str, seeds: int | None, first_seed: int,
                    out: str | Path | None, device: str, resume: bool, overwrite: bool, jobs: int,
                    overrides: Sequence[str], progress: bool, log: Any) -> Path:
    if preset not in exp.presets:
        raise ValueError(f"preset must be one of {', '.join(exp.presets)}, got {preset!r}")
    cfg = exp.presets[preset].with_overrides(overrides)  # typed and checked (ValueError)
    n_seeds = int(seeds if seeds is not None else cfg.seeds)
    if n_seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {n_seeds}")
    if isinstance(first_seed, bool) or not isinstance(first_seed, int) or first_seed < 0:
        raise ValueError(f"first_seed must be an integer >= 0, got {first_seed!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if resume and overwrite:
        raise ValueError("--resume keeps a folder's runs and --overwrite deletes them: choose one")
    rows = list(cfg.rows or exp.rows)
    unknown = [r for r in rows if r not in exp.rows]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {list(exp.rows)}")
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    if repeated:
        raise ValueError(f"rows names {', '.join(repeated)} more than once: each row is one run "
                         "per seed")
    dist = setup_distributed(device)
    if dist.enabled and jobs > 1:
        raise ValueError("jobs > 1 cannot be combined with torchrun")
    preflight(exp, cfg, rows)
    out_dir = Path(out or f"runs/{exp.name}-{preset}")
    folder = RunFolder(out_dir)
    config = {"experiment": exp.name, "preset": preset, "seeds": n_seeds, "first_seed": first_seed,
              "settings": cfg.to_dict(), "world_size": dist.world_size,
              "provenance": provenance(), "command": command_line(),
              "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    specs = [RunSpec(exp, cfg, row, seed, out_dir / row / f"seed{seed}", resume)
             for seed in range(first_seed, first_seed + n_seeds) for row in rows]
    with folder.lock() if dist.is_main else nullcontext():
        if dist.is_main:
            folder.check(config, resume=resume, overwrite=overwrite)
            if overwrite:
                folder.clear()
            folder.remove_partial_writes()  # of a process killed while writing
        todo = [s for s in specs if not (s.run_dir / "final.json").exists()]
        if dist.is_main:
            if resume:  # before anything trains: every checkpoint against these settings
                check_resumable(exp, todo, dist.world_size)
            folder.write_config(config)
        barrier(dist)
        outcomes = run_all(todo, dist, jobs, progress)
        try:
            for o in outcomes:  # each as it finishes
                if dist.is_main:
                    shown = (f"FAILED ({o.final['failed']})" if o.failed else
                             ", ".join(f"{k}={_number(o.final[k])}" for k, _ in exp.columns
                                       if isinstance(o.final.get(k), int | float)))
                    log(f"[{exp.name}] {o.row} seed {o.seed}: {shown}")
        finally:
            outcomes.close()  # an interrupted pool stops its workers
        barrier(dist)
        if dist.is_main:
            write_report(exp, out_dir, report_settings(json.loads(
                folder.config_path.read_text(encoding="utf-8"))))
    return out_dir


def _number(v: float) -> str:
    """A value for the run log: counts as integers (10000, not 1e+04), others to 4 digits."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.4g}"


def write_report(exp: Experiment, out_dir: Path, cfg: dict[str, Any] | None = None) -> Path:
    """(Re)write ``results.md`` and the learning-curve plot of a run folder; ``cfg``: its
    recorded settings (default: those of its ``config.json``)."""
    if cfg is None:
        cfg = json.loads((out_dir / "config.json").read_text())["settings"]
    rows = list(cfg.get("rows") or exp.rows)
    results = exp.complete(collect(out_dir, rows))
    body = [exp.description]
    partial = partial_note(results, int(cfg.get("seeds", 1)))  # a run writing it, or stopped
    body += [partial] if partial else []
    body.append(results_table(results, exp.columns, exp.paper))
    claims = [c for c in exp.claims if c.better in rows and c.than in rows]
    if claims:
        body.append("Claims of the paper, judged over seeds (difference in the paper's direction, "
                    "Welch's 95 % interval; holds / does not hold / undecided):\n\n"
                    + verdict_table(claims, {r.row: r.finals for r in results}))
    png = plot_curves(results, exp.curve[0], exp.curve[1], out_dir / "curves.png",
                      title=exp.name)
    if png is not None:
        body.append(f"![learning curves]({png.name})")
    body += exp.figures(out_dir, exp.config_of(cfg))
    if exp.notes:
        body.append(exp.notes)
    settings = ", ".join(f"{k}={v}" for k, v in cfg.items())
    body.append(f"Settings: {settings}")
    return write_results(out_dir, f"{exp.name}: results", body)


__all__ = [
    "PRESETS",
    "Claim",
    "ClassificationTask",
    "DistInfo",
    "Experiment",
    "ExperimentConfig",
    "RunError",
    "Task",
    "batch_generator",
    "check_settings",
    "model_device",
    "preflight",
    "rank_slice",
    "report_settings",
    "run_experiment",
    "uniform_init_",
    "weights",
    "write_report",
]
