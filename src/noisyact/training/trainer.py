"""One training loop for every experiment, readable in one sitting.

data → forward → backward → clip → step → anneal → log → evaluate → checkpoint.

A :class:`Task` supplies the model, deterministic batches (a pure function of seed, step and rank,
so a resumed run sees exactly the batches it would have seen), the loss and the evaluation. The
loop owns the rest: optimiser, gradient clipping, the noise annealer, JSONL metrics, atomic
checkpoints with every RNG state, ``resume``, and DDP when launched under ``torchrun``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..convert import param_groups
from .checkpoint import atomic_save, atomic_write_json, atomic_write_text, load_checkpoint
from .distributed import DistInfo, all_ranks_equal
from .optim import GravesRMSprop
from .task import Task

OPTIMIZERS = ("adam", "sgd", "rmsprop-graves")


@dataclass
class TrainConfig:
    """What the loop needs to know; experiments fill it from their presets."""

    steps: int
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam", "sgd" or "rmsprop-graves"
    weight_decay: float = 0.0
    clip: float = 5.0  # max gradient norm; 0 disables
    clip_value: float = 0.0  # clip every gradient component to ±clip_value first; 0 disables
    eval_every: int = 100
    ckpt_every: int = 100
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("clip", "clip_value"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("eval_every", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


class ResumeError(ValueError):
    """A checkpoint that the run asked to continue was trained under other settings."""

    def __init__(self, path: Path, conflicts: list[str]) -> None:
        super().__init__(f"cannot resume {path}: it was trained with other settings ("
                         + "; ".join(conflicts) + "); resume with the settings it was trained "
                         "with, or use --overwrite to start over")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _param_checksum(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def make_optimizer(name: str, groups: Any, lr: float) -> torch.optim.Optimizer:
    """``adam``, ``sgd`` (plain, as Zaremba) or ``rmsprop-graves`` (Graves 2013)."""
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "rmsprop-graves":
        return GravesRMSprop(groups, lr=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def resume_conflicts(ck: dict[str, Any], cfg: TrainConfig, settings: dict[str, Any] | None,
                     world_size: int) -> list[str]:
    """What differs between a checkpoint and the run that would continue it: its loop settings,
    the experiment's settings and the number of processes (each ``key: old in the checkpoint,
    new now``). Checkpoints from before a key was recorded are not compared on it."""
    old = dict(ck.get("config") or {})
    new = asdict(cfg)
    if ck.get("settings") is not None and settings is not None:
        old.update(ck["settings"])
        new.update(settings)
    if "world_size" in ck:
        old["world_size"], new["world_size"] = ck["world_size"], world_size
    keys = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    return [f"{k}: {old[k]!r} in the checkpoint, {new[k]!r} now" for k in keys]


def train(task: Task, cfg: TrainConfig, run_dir: str | Path, *, dist: DistInfo | None = None,
          resume: bool = False, progress: bool = True, desc: str = "",
          stop_at: int | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one (row, seed) and return its final metrics (also written to ``final.json``).

    Args:
        task: the experiment's task.
        cfg: loop settings.
        run_dir: folder for ``metrics.jsonl``, ``checkpoint.pt`` and ``final.json``.
        dist: process placement (single process on CPU by default).
        resume: continue from ``checkpoint.pt`` if present; a finished run is not redone.
        progress: show a progress bar (main rank, interactive terminals).
        desc: progress-bar label.
        stop_at: stop (as if killed) after this many steps, without finishing; for tests.
        settings: the experiment's settings, kept in checkpoints: a resume under other settings
            (or another number of processes) is refused, naming them (:func:`resume_conflicts`).
    """
    dist = dist or DistInfo()
    run_dir = Path(run_dir)
    final_path = run_dir / "final.json"
    ckpt_path = run_dir / "checkpoint.pt"
    if resume and final_path.exists():
        return json.loads(final_path.read_text())

    # Every rank builds the same model from the seed; DDP then broadcasts rank 0's weights.
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(dist.device)
    groups = param_groups(model, cfg.weight_decay)
    opt = make_optimizer(cfg.optimizer, groups, cfg.lr)
    annealer = task.annealer(model)
    step, history, running, elapsed = 0, [], 0.0, 0.0
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, required=("model", "optimizer", "step", "history", "rng"))
        conflicts = resume_conflicts(ck, cfg, settings, dist.world_size)
        if conflicts:
            raise ResumeError(ckpt_path, conflicts)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if annealer is not None and ck.get("annealer") is not None:
            annealer.load_state_dict(ck["annealer"])
        step, history, running = ck["step"], ck["history"], ck["running_loss"]
        elapsed = float(ck.get("elapsed_s", 0.0))
        if ck.get("task") is not None:
            task.load_state_dict(ck["task"])
        _set_rng_state(ck["rng"][dist.rank] if dist.rank < len(ck["rng"]) else ck["rng"][0],
                       dist.device)
    else:
        # each rank its own noise and dropout stream
        torch.manual_seed(cfg.seed * 1_000_003 + dist.rank)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text("".join(json.dumps(r) + "\n" for r in history),
                          run_dir / "metrics.jsonl")
    net: nn.Module = model
    if dist.enabled:
        dev_ids = [dist.device.index] if dist.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=dev_ids)

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        if dist.is_main:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def checkpoint() -> None:
        rng = [_rng_state(dist.device)]
        if dist.enabled:
            gathered: list[Any] = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if dist.is_main:
            atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "annealer": None if annealer is None else annealer.state_dict(),
                         "step": step, "history": history, "rng": rng,
                         "running_loss": running,
                         "elapsed_s": elapsed + time.perf_counter() - t_start,
                         "task": task.state_dict(),
                         "config": asdict(cfg), "settings": settings,
                         "world_size": dist.world_size}, ckpt_path)

    t_start = time.perf_counter()  # wall time of this process (evaluations included)
    show = progress and dist.is_main and sys.stderr.isatty()
    train_time, timed_steps, start_step = 0.0, 0, step
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not show, leave=False)
    while step < cfg.steps and not task.finished:
        if stop_at is not None and step >= stop_at:
            bar.close()
            return {"stopped_at": step}
        t0 = time.perf_counter()
        net.train()
        lr = task.lr_at(step, cfg.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = task.batch(step, dist.rank, dist.world_size)
        loss = task.loss(net, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step} ({desc})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_value > 0:
            nn.utils.clip_grad_value_(model.parameters(), cfg.clip_value)
        gnorm = (nn.utils.clip_grad_norm_(model.parameters(), cfg.clip) if cfg.clip > 0
                 else torch.tensor(0.0))
        opt.step()
        if annealer is not None:
            annealer.step()
        step += 1
        running += loss.item()
        if step > start_step + 2:  # the first steps pay for compilation: not timed
            train_time += time.perf_counter() - t0
            timed_steps += 1
        bar.update(1)
        if step % cfg.log_every == 0:
            rec = {"step": step, "train_loss": running / cfg.log_every, "lr": lr,
                   "grad_norm": float(gnorm)}
            if annealer is not None:
                rec["c"] = annealer.c
            log(rec)
            bar.set_postfix(loss=f"{running / cfg.log_every:.3f}")
            running = 0.0
        if extra := task.after_step(model, step):
            log({"step": step, **extra})
        done = step == cfg.steps or task.finished
        if step % cfg.eval_every == 0 or done:
            metrics = task.evaluate(model, "valid") if dist.is_main else {}
            monitored = {f"{split}_{k}": v for split in task.monitor_splits if dist.is_main
                         for k, v in task.evaluate(model, split).items()}
            log({"step": step, **{f"valid_{k}": v for k, v in metrics.items()}, **monitored})
            if dist.is_main:  # before the checkpoint, so that what the task keeps is saved
                task.on_evaluate(model, step, metrics)
        if step % cfg.ckpt_every == 0 or done:
            checkpoint()
        if done:
            break
    bar.close()
    in_sync = all_ranks_equal(_param_checksum(model), dist)
    final: dict[str, Any] = {"steps": step, "world_size": dist.world_size,
                             "ranks_in_sync": in_sync}
    tokens = task.tokens_per_step
    if tokens and timed_steps:  # throughput of this process's training steps (not evaluation)
        final["train_tokens_per_s"] = tokens * dist.world_size * timed_steps / train_time
    if dist.is_main:
        final.update(task.summarize(history))
    if dist.is_main:
        final.update({f"test_{k}": v for k, v in task.evaluate(model, "test").items()})
        final.update({f"valid_{k}": v for k, v in task.evaluate(model, "valid").items()})
        final = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in final.items()}
        # when and how long (kept apart so that final.json is the same after a resume)
        atomic_write_json({"wall_s": elapsed + time.perf_counter() - t_start,
                           "finished_at": datetime.now(timezone.utc).strftime(
                               "%Y-%m-%dT%H:%M:%SZ")}, run_dir / "timing.json")
        atomic_write_json(final, final_path)
    return final


__all__ = ["ResumeError", "Task", "TrainConfig", "resume_conflicts", "train"]
