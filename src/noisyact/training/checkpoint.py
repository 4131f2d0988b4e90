"""Atomic checkpoints: a run killed at any moment leaves either the old or the new file.

A checkpoint ends with a SHA-256 footer over its bytes, so a damaged file is refused with a
one-line error naming it instead of loading wrong numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

_FOOTER = b"\nnoisyact-sha256:"  # + 64 hex digits, at the very end of a checkpoint
_FOOTER_LEN = len(_FOOTER) + 64


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (damaged, truncated or not a noisyact checkpoint)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would have made it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder with a checksum footer, then rename
    over ``path``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    footer = _FOOTER + hashlib.sha256(data).hexdigest().encode()
    _atomic_write(Path(path), lambda f: (f.write(data), f.write(footer)))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically."""
    _atomic_write(Path(path), lambda f: f.write(json.dumps(obj, indent=2).encode()))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write text atomically."""
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save`, verifying its checksum.

    Raises :class:`CheckpointError` (one line, naming the file) if the bytes do not match the
    checksum, the file cannot be read, or it lacks one of the ``required`` keys. Files without a
    footer (written before checksums existed) load unverified.
    """
    path = Path(path)
    how = "delete it (or use --overwrite) to start that run over"
    data = path.read_bytes()
    tail = data[-_FOOTER_LEN:]
    if tail.startswith(_FOOTER):
        data = data[:-_FOOTER_LEN]
        if hashlib.sha256(data).hexdigest().encode() != tail[len(_FOOTER):]:
            raise CheckpointError(f"checkpoint {path} is damaged (checksum mismatch); {how}")
    try:
        ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({first}); {how}") from None
    missing = [k for k in required if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a noisyact training checkpoint "
                              f"(no {', '.join(map(repr, missing))}); {how}")
    return ck
