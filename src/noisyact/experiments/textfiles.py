"""Reading the text files that users supply (PTB, Multi30k, Flickr8k captions): UTF-8, plain or
``.gz``; a byte-order mark at the start (as some editors write) is dropped, not read as a word; a
missing, unreadable, badly encoded or empty file is a ``ValueError`` naming it."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

__all__ = ["read_lines"]


def read_lines(path: Path, *, limit: int = 0, hint: str = "") -> tuple[list[str], int]:
    """The first ``limit`` lines of ``path`` (0: all), without their line ends, and the file's
    number of lines. A name ending in ``.gz`` is read through gzip. ``hint`` (how to get the
    file right) is appended to every error message."""
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise ValueError(f"{path} is missing{tail}")
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    lines: list[str] = []
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8-sig") as fh:  # a leading BOM is dropped
            for n, line in enumerate(fh, 1):
                if not limit or n <= limit:
                    lines.append(line.rstrip("\r\n"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text ({_first_bad_byte(path, opener)}){tail}"
                         ) from None
    except (OSError, EOFError) as exc:  # unreadable, or a damaged .gz
        raise ValueError(f"{path} cannot be read: {getattr(exc, 'strerror', None) or exc}{tail}"
                         ) from None
    if not any(x.strip() for x in lines):
        raise ValueError(f"{path} is empty{tail}")
    return lines, n


def _first_bad_byte(path: Path, opener: Any) -> str:
    """Which byte of the (decompressed) file cannot be decoded, and where: a streaming decoder
    reports offsets within its buffer, so the file is decoded again as a whole."""
    with opener(path, "rb") as fh:
        data = fh.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"byte {data[exc.start]:#04x} at offset {exc.start}"
    return "a byte cannot be decoded"  # pragma: no cover - the stream failed, the whole did not
