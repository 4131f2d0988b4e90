"""The training machinery shared by every experiment: loop, checkpoints, DDP, reports.

Arrows point one way: experiments -> training -> library core.
"""

from .checkpoint import atomic_save, load_checkpoint
from .distributed import DistInfo, setup_distributed
from .optim import GravesRMSprop
from .task import Task
from .trainer import TrainConfig, train

__all__ = [
    "DistInfo",
    "GravesRMSprop",
    "Task",
    "TrainConfig",
    "atomic_save",
    "load_checkpoint",
    "setup_distributed",
    "train",
]
