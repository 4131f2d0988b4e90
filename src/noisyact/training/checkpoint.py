"""Atomic checkpoints: a run killed at any moment leaves either the old or the new file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically."""
    _atomic_write(Path(path), lambda f: f.write(json.dumps(obj, indent=2).encode()))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write text atomically."""
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save`, with a clear error if it is damaged."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise RuntimeError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") \
            from exc
