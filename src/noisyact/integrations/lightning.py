"""A Lightning callback: noise annealing that survives a checkpoint restart, and the noise
monitor in the run's logger.

::

    from noisyact.integrations.lightning import NoiseCallback

    trainer = L.Trainer(callbacks=[NoiseCallback(noisyact.InverseSqrt(c0=30.0, every=200))])
    trainer.fit(model)                     # c annealed after each optimizer step
    trainer.fit(model, ckpt_path="last")   # ... and resumed where it was

Works with ``lightning`` (``lightning.pytorch``) or the older ``pytorch_lightning`` package.
"""

from __future__ import annotations

from typing import Any

from ..anneal import Schedule
from ..monitor import NoiseTracker

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning import Callback  # type: ignore[no-redef]
    except ImportError:
        raise ImportError("noisyact.integrations.lightning needs Lightning: "
                          "pip install 'noisyact[integrations]'") from None

__all__ = ["NoiseCallback"]


class NoiseCallback(Callback):  # type: ignore[misc]
    """Anneal c after every optimizer step and log the noise monitor.

    The annealer's step is saved in Lightning's checkpoints (the callback's state) and restored
    on ``fit(ckpt_path=...)``, so that the schedule goes on where it stopped.

    Args:
        schedule: a :class:`~noisyact.anneal.Schedule` for c, or None (monitoring only).
        log_every: optimizer steps between two logs of the monitor (``noise/<unit>/saturated``,
            ``.../mean_sigma``, ``.../moved``, ``.../c``, and ``noise/c``) to the trainer's
            logger; 0: no monitor.
        every: the monitor's sampling (:class:`~noisyact.NoiseMonitor`).
        **annealer: passed to :class:`~noisyact.NoiseAnnealer` (``variants=``).
    """

    def __init__(self, schedule: Schedule | None = None, *, log_every: int = 50, every: int = 1,
                 **annealer: Any) -> None:
        super().__init__()
        self.schedule, self.log_every, self.every, self.annealer_kw = (
            schedule, log_every, every, annealer)
        self.tracker: NoiseTracker | None = None
        self._pending: dict[str, Any] | None = None
        self._seen_step = -1
        self.last_logged: dict[str, float] = {}

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or self.tracker is not None:
            return
        self.tracker = NoiseTracker(pl_module, self.schedule, log_every=self.log_every,
                                    log=lambda values, step: self._log(trainer, values),
                                    every=self.every, **self.annealer_kw)
        if self._pending is not None:
            self.tracker.load_state_dict(self._pending)
            self._pending = None

    def _log(self, trainer: Any, values: dict[str, float]) -> None:
        self.last_logged = dict(values)
        if trainer.logger is not None:
            trainer.logger.log_metrics(values, step=trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.tracker is None or trainer.global_step == self._seen_step:
            return  # no optimizer step in this batch (gradient accumulation)
        self._seen_step = trainer.global_step
        self.tracker.step()

    def state_dict(self) -> dict[str, Any]:
        if self.tracker is not None:
            return self.tracker.state_dict()
        return dict(self._pending or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.tracker is not None:
            self.tracker.load_state_dict(state_dict)
        else:
            self._pending = dict(state_dict)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self.tracker is not None:
            self._pending = self.tracker.state_dict()  # trainer.save_checkpoint after fit
            self.tracker.remove()
            self.tracker = None
