"""Running (row, seed) trainings: in this process, in a pool of worker processes that stops
when told, or data-parallel under ``torchrun``; and the compilation policy of a run.

The experiments hand over :class:`RunSpec` values (an experiment, its settings, a row and seed,
the run's folder); this module knows nothing of what an experiment is beyond the two methods it
calls (``make_task``, ``train_config``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .. import (
    compile_after,
    compile_after_chosen,
    fused_mode,
    noise_source,
    set_compile_after,
    set_fused_mode,
    set_noise_source,
)
from .checkpoint import atomic_write_json, load_checkpoint
from .distributed import DistInfo
from .trainer import ResumeError, TrainConfig, resume_conflicts, train


class Job(Protocol):
    """What the runner needs of an experiment."""

    def make_task(self, row: str, cfg: Any, seed: int) -> Any: ...

    def train_config(self, cfg: Any, seed: int) -> TrainConfig: ...


@contextmanager
def compile_policy() -> Iterator[None]:
    """Inside, fused kernels are compiled at their first call unless a budget was chosen
    (:func:`noisyact.set_compile_after` or ``NOISYACT_COMPILE_AFTER``): when a kernel switches
    from eager to compiled code (which round differently) must not depend on timing, so that a
    rerun or a resume gives the same numbers; a training run amortises the compilation anyway.
    The caller's setting is restored at the end. Bad environment values are a ``ValueError``
    here, before anything runs."""
    noise_source(), fused_mode(), compile_after()  # NOISYACT_NOISE / _FUSED / _COMPILE_AFTER
    default_budget = not compile_after_chosen()
    if default_budget:
        set_compile_after(0)
    try:
        yield
    finally:
        if default_budget:
            set_compile_after(None)


@dataclass(frozen=True)
class RunSpec:
    """One (row, seed) of a run folder, as handed to a worker process."""

    exp: Job
    cfg: Any  # the experiment's settings (``to_dict()``)
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


def train_one(spec: RunSpec, dist: DistInfo, progress: bool) -> RunOutcome:
    task = spec.exp.make_task(spec.row, spec.cfg, spec.seed)
    try:
        final = train(task, spec.exp.train_config(spec.cfg, spec.seed), spec.run_dir, dist=dist,
                      resume=spec.resume, progress=progress, desc=f"{spec.row} seed {spec.seed}",
                      settings=spec.cfg.to_dict())
    except FloatingPointError as err:  # a diverged seed is a result, not a crash
        final = {"failed": str(err)}
        if dist.is_main:
            atomic_write_json(final, spec.run_dir / "final.json")
    return RunOutcome(spec.row, spec.seed, final)


def exit_with_parent() -> None:
    """In a worker process: exit as soon as the parent process ends, however it ends.

    A ``--jobs`` worker outlives a parent killed by a signal (only Ctrl-C reaches the whole
    process group), and would go on training into a folder whose lock is gone, beside a
    ``--resume`` that trains the same run. A daemon thread waits on the parent's sentinel (the
    public ``multiprocessing.parent_process()``) and ends the worker; what it has finished is
    in its atomic checkpoints, which ``--resume`` continues.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _Stopped(Exception):
    """A worker's run stopped by the parent."""


class _WorkerState:
    stop: Any = None  # the parent's multiprocessing.Event: set, no further run starts
    running = False


def _worker_init(threads: int, noise_source: str, fused: str, after: float, stop: Any) -> None:
    exit_with_parent()
    # Ctrl-C reaches the whole process group: the parent stops the workers. It sets ``stop`` (no
    # queued run starts) and sends SIGTERM, which ends the run in hand where it is (checkpoints
    # are atomic) so that the worker returns to the pool and the pool shuts down cleanly.
    _WorkerState.stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)
    torch.set_num_threads(threads)
    set_noise_source(noise_source)
    set_fused_mode(fused)
    set_compile_after(after)


def _stop_worker(signum: int, frame: Any) -> None:
    if _WorkerState.running:
        raise _Stopped


def _worker(spec: RunSpec) -> RunOutcome:
    stopped = RunOutcome(spec.row, spec.seed, {"failed": "stopped"})
    if _WorkerState.stop is not None and _WorkerState.stop.is_set():
        return stopped
    _WorkerState.running = True
    try:
        return train_one(spec, DistInfo(), progress=False)
    except _Stopped:
        return stopped
    finally:
        _WorkerState.running = False


def run_all(specs: list[RunSpec], dist: DistInfo, jobs: int, progress: bool
             ) -> Iterator[RunOutcome]:
    if jobs == 1 or len(specs) <= 1:
        for s in specs:
            yield train_one(s, dist, progress)
        return
    threads = max(1, torch.get_num_threads() // jobs)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                               initargs=(threads, noise_source(), fused_mode(), compile_after(),
                                         stop))
    try:
        for future in as_completed([pool.submit(_worker, s) for s in specs]):
            try:
                yield future.result()
            except BrokenProcessPool:
                raise RunError("a worker process ended abruptly (killed, or out of memory); "
                               "finished runs and checkpoints are kept: continue with the same "
                               "command and --resume") from None
    except BaseException:  # Ctrl-C, SIGTERM, a failed run: no queued run starts, none goes on
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            child.terminate()  # SIGTERM: the run in hand returns (_stop_worker)
        raise
    finally:
        pool.shutdown()  # the workers end and the pool's queues are released


class RunError(RuntimeError):
    """A run that could not go on (a worker process died); the message says how to continue."""


def check_resumable(exp: Job, specs: Sequence[RunSpec], world_size: int) -> None:
    """Refuse (:class:`~noisyact.training.trainer.ResumeError`) to continue any checkpoint of
    ``specs`` that was trained under other settings or another number of processes."""
    for spec in specs:
        path = spec.run_dir / "checkpoint.pt"
        if path.exists():
            ck = load_checkpoint(path, required=("config",))
            conflicts = resume_conflicts(ck, exp.train_config(spec.cfg, spec.seed),
                                         spec.cfg.to_dict(), world_size)
            if conflicts:
                raise ResumeError(path, conflicts)


__all__ = ["Job", "RunError", "RunOutcome", "RunSpec", "check_resumable", "compile_policy",
           "exit_with_parent", "run_all", "train_one"]
