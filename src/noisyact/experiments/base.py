"""What every experiment is: presets, rows, a task per (row, seed), and its report."""

from __future__ import annotations

import json
import math
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..compiler import fused_mode
from ..noise import noise_source
from ..training.checkpoint import atomic_write_json
from ..training.distributed import DistInfo, barrier, setup_distributed
from ..training.report import RowResult, collect, plot_curves, results_table, write_results
from ..training.runfolder import RunFolder, command_line, provenance
from ..training.task import Task
from ..training.trainer import TrainConfig, train
from ..training.verdict import Claim, verdict_table

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


BaseTask = Task  # the experiments' tasks derive from the training loop's base class


class ClassificationTask(BaseTask):
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
    # the paper's claims on this experiment, the headline first; judged in every report
    claims: tuple[Claim, ...] = ()
    paper_table: str = ""  # where the paper reports it ("Table 2", "Fig. 9")
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


# What the settings shared by the experiments may be (a setting absent from an experiment's
# presets is not checked). Experiment-specific relations (min_items <= max_items, …) are checked
# by the task when it is built (see :func:`preflight`).
_AT_LEAST_1 = ("batch_size", "steps", "seeds", "hidden", "mlp", "emb", "dim", "dim_word",
               "att_dim", "layers", "bptt", "epochs", "eval_batch", "eval_chunks", "pass_steps",
               "check_every", "beam", "max_out", "maxlen", "memory_slots", "memory_width", "reads",
               "image_size", "length", "vocab", "n_train", "n_valid", "n_test", "n_eval",
               "valid_size", "test_size", "valid_bleu_size", "target_length", "target_nesting",
               "max_objects", "min_freq", "max_items", "curriculum_min", "eval_every",
               "ckpt_every", "log_every")
_AT_LEAST_0 = ("eval_tokens", "max_train_tokens", "eval_size", "train_limit", "check_at",
               "decay_after")  # 0: off (all) or a count from 0
_POSITIVE = ("lr", "anneal_every", "c0", "solved_nll", "min_lr", "alpha")
_NONNEGATIVE = ("clip", "clip_value", "init", "init_std", "ortho_scale", "c_floor", "c_fixed",
                "c", "alpha_c", "curriculum_slope")
_FRACTION = ("train_fraction", "curriculum_frac", "decay", "lr_decay", "target_acc")  # (0, 1]


def check_settings(cfg: dict[str, Any]) -> None:
    """Refuse (``ValueError`` naming the setting) a value no row could train with: sizes and
    counts below 1, negative rates and scales, fractions outside their range, NaN or infinity."""
    def bad(key: str, what: str) -> ValueError:
        return ValueError(f"{key} must be {what}, got {cfg[key]!r}")

    for key, v in cfg.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise bad(key, "a finite number")
    for key in _AT_LEAST_1:
        if key in cfg and not cfg[key] >= 1:
            raise bad(key, ">= 1")
    for key in _AT_LEAST_0 + _NONNEGATIVE:
        if key in cfg and not cfg[key] >= 0:
            raise bad(key, ">= 0")
    for key in _POSITIVE:
        if key in cfg and not cfg[key] > 0:
            raise bad(key, "> 0")
    for key in _FRACTION:
        if key in cfg and not 0 < cfg[key] <= 1:
            raise bad(key, "in (0, 1]")
    if "dropout" in cfg and not 0 <= cfg["dropout"] < 1:
        raise bad("dropout", "in [0, 1)")


def report_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a report of a run folder shows, from its ``config.json``: the run's settings
    with ``seeds`` the number of seeds run into the folder (``--seeds`` or a resume with more
    seeds may exceed the preset's)."""
    settings = dict(config["settings"])
    if "seeds" in config:
        settings["seeds"] = int(config["seeds"])
    return settings


@dataclass(frozen=True)
class RunSpec:
    """One (row, seed) of a run folder, as handed to a worker process."""

    exp: Experiment
    cfg: dict[str, Any]
    row: str
    seed: int
    run_dir: Path
    resume: bool


@dataclass(frozen=True)
class RunOutcome:
    """What a (row, seed) ended with: its final metrics, or why it failed."""

    row: str
    seed: int
    final: dict[str, Any]

    @property
    def failed(self) -> bool:
        return "failed" in self.final


def _train_one(spec: RunSpec, dist: DistInfo, progress: bool) -> RunOutcome:
    task = spec.exp.make_task(spec.row, spec.cfg, spec.seed)
    try:
        final = train(task, spec.exp.train_config(spec.cfg, spec.seed), spec.run_dir, dist=dist,
                      resume=spec.resume, progress=progress, desc=f"{spec.row} seed {spec.seed}")
    except FloatingPointError as err:  # a diverged seed is a result, not a crash
        final = {"failed": str(err)}
        if dist.is_main:
            atomic_write_json(final, spec.run_dir / "final.json")
    return RunOutcome(spec.row, spec.seed, final)


def _worker_init(threads: int, noise_source: str, fused: str) -> None:
    from .. import compiler, noise

    torch.set_num_threads(threads)
    noise.set_noise_source(noise_source)
    compiler.set_fused_mode(fused)


def _worker(spec: RunSpec) -> RunOutcome:
    return _train_one(spec, DistInfo(), progress=False)


def preflight(exp: Experiment, cfg: dict[str, Any], rows: Sequence[str]) -> None:
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
                   out: str | Path | None = None, device: str = "cpu", resume: bool = False,
                   overwrite: bool = False, jobs: int = 1, overrides: Sequence[str] = (),
                   progress: bool = True, log: Any = print) -> Path:
    """Train every row × seed of ``exp`` and write ``results.md`` and plots; return the folder.

    Runs go seed by seed (every row's seed 0 first). The folder is checked before anything is
    written (:class:`~noisyact.training.runfolder.RunFolder`): finished runs are kept and
    interrupted ones continued only with ``resume``; ``overwrite`` deletes an earlier run of the
    folder. ``jobs`` > 1 trains that many (row, seed) runs at once in worker processes, each with
    its share of torch's threads. Under ``torchrun`` every row runs data-parallel across the
    processes.
    """
    if preset not in exp.presets:
        raise ValueError(f"preset must be one of {', '.join(exp.presets)}, got {preset!r}")
    noise_source(), fused_mode()  # NOISYACT_NOISE / NOISYACT_FUSED: ValueError if bad
    cfg = parse_overrides(exp.presets[preset], overrides)
    check_settings(cfg)
    n_seeds = int(seeds if seeds is not None else cfg.get("seeds", 1))
    if n_seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {n_seeds}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if resume and overwrite:
        raise ValueError("--resume keeps a folder's runs and --overwrite deletes them: choose one")
    rows = list(cfg.get("rows") or exp.rows)
    unknown = [r for r in rows if r not in exp.rows]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {list(exp.rows)}")
    dist = setup_distributed(device)
    if dist.enabled and jobs > 1:
        raise ValueError("jobs > 1 cannot be combined with torchrun")
    preflight(exp, cfg, rows)
    out_dir = Path(out or f"runs/{exp.name}-{preset}")
    folder = RunFolder(out_dir)
    config = {"experiment": exp.name, "preset": preset, "seeds": n_seeds,
              "settings": json.loads(json.dumps(cfg)), "world_size": dist.world_size,
              "provenance": provenance(), "command": command_line(),
              "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    specs = [RunSpec(exp, cfg, row, seed, out_dir / row / f"seed{seed}", resume)
             for seed in range(n_seeds) for row in rows]
    with folder.lock() if dist.is_main else nullcontext():
        if dist.is_main:
            folder.check(config, resume=resume, overwrite=overwrite)
            if overwrite:
                folder.clear()
            folder.write_config(config)
        barrier(dist)
        todo = [s for s in specs if not (s.run_dir / "final.json").exists()]
        for o in _run_all(todo, dist, jobs, progress):  # each as it finishes
            if dist.is_main:
                shown = (f"FAILED ({o.final['failed']})" if o.failed else
                         ", ".join(f"{k}={o.final[k]:.4g}" for k, _ in exp.columns
                                   if isinstance(o.final.get(k), int | float)))
                log(f"[{exp.name}] {o.row} seed {o.seed}: {shown}")
        barrier(dist)
        if dist.is_main:
            write_report(exp, out_dir, report_settings(json.loads(
                folder.config_path.read_text(encoding="utf-8"))))
    return out_dir


def _run_all(specs: list[RunSpec], dist: DistInfo, jobs: int, progress: bool
             ) -> Iterator[RunOutcome]:
    if jobs == 1 or len(specs) <= 1:
        for s in specs:
            yield _train_one(s, dist, progress)
        return
    from .. import compiler, noise

    threads = max(1, torch.get_num_threads() // jobs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, noise.noise_source(), compiler.fused_mode())
                             ) as pool:
        for future in as_completed([pool.submit(_worker, s) for s in specs]):
            yield future.result()


def write_report(exp: Experiment, out_dir: Path, cfg: dict[str, Any] | None = None) -> Path:
    """(Re)write ``results.md`` and the learning-curve plot of a run folder."""
    if cfg is None:
        cfg = json.loads((out_dir / "config.json").read_text())["settings"]
    rows = list(cfg.get("rows") or exp.rows)
    results = exp.complete(collect(out_dir, rows))
    body = [exp.description, results_table(results, exp.columns, exp.paper)]
    claims = [c for c in exp.claims if c.better in rows and c.than in rows]
    if claims:
        body.append("Claims of the paper, judged over seeds (difference in the paper's direction, "
                    "Welch's 95 % interval; holds / does not hold / undecided):\n\n"
                    + verdict_table(claims, {r.row: r.finals for r in results}))
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
    "Claim",
    "ClassificationTask",
    "DistInfo",
    "Experiment",
    "batch_generator",
    "check_settings",
    "model_device",
    "parse_overrides",
    "preflight",
    "rank_slice",
    "report_settings",
    "run_experiment",
    "uniform_init_",
    "weights",
    "write_report",
]
