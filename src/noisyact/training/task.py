"""What an experiment provides for one (row, seed): the :class:`Task` base class.

The training loop (:func:`noisyact.training.train`) calls every method below; the required ones
raise ``NotImplementedError`` here, the optional hooks have defaults that do nothing.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..anneal import NoiseAnnealer


class Task:
    """One (row, seed) of an experiment: model, batches, loss, evaluation and optional hooks.

    Required: :meth:`build_model`, :meth:`batch`, :meth:`loss`, :meth:`evaluate`.

    Optional (override when needed): :meth:`annealer` (a noise schedule), :meth:`lr_at` (a
    learning-rate schedule), :meth:`after_step` (run after every update; an adaptive curriculum
    logs what it returns and sets :attr:`finished` to end training), :meth:`on_evaluate` (after
    each validation), :meth:`summarize` (extra final metrics from the logged records),
    :meth:`state_dict`/:meth:`load_state_dict` (state carried across batches, such as a language
    model's hidden state, saved in checkpoints) and :attr:`tokens_per_step` (for the throughput
    in ``final.json``).
    """

    #: set to True by a task that ends training early (an adaptive curriculum that is done)
    finished: bool = False
    #: tokens processed per update on one process, or None when throughput is not reported
    tokens_per_step: int | None = None
    #: further splits that :meth:`evaluate` accepts, evaluated and logged (as ``split_metric``)
    #: beside each validation, e.g. a sample of the training text in eval mode
    monitor_splits: tuple[str, ...] = ()

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def batch(self, step: int, rank: int, world_size: int) -> Any:
        """The training batch of this step and rank: a pure function of (seed, step, rank)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Metrics on ``split`` ("valid", "test" or one of :attr:`monitor_splits`), model in eval
        mode, no grad."""
        raise NotImplementedError

    def annealer(self, model: nn.Module) -> NoiseAnnealer | None:
        """An annealing schedule for the model's noise, or None."""
        return None

    def lr_at(self, step: int, base_lr: float) -> float:
        """The learning rate of this step (schedules such as Zaremba's halving)."""
        return base_lr

    def after_step(self, model: nn.Module, step: int) -> dict[str, Any] | None:
        """Run after every update; a dict returned is logged with the step."""
        return None

    def on_evaluate(self, model: nn.Module, step: int, metrics: dict[str, float]) -> None:
        """Run (main rank) after each validation, with its metrics, before the checkpoint of
        that step: e.g. keep the best model so far in :meth:`state_dict` (early stopping)."""

    def summarize(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Extra final metrics computed from the logged records."""
        return {}

    def state_dict(self) -> dict[str, Any] | None:
        """State carried across batches, saved in checkpoints (None: nothing to save)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


__all__ = ["Task"]
