"""A run folder holds one experiment with one set of settings, written by one process at a time.

``config.json`` records what determines the numbers (the experiment, preset and settings, and
:func:`provenance`: noise source, fused mode, torch and noisyact versions, the git commit when
known). A run into an existing folder is checked against it *before anything is written*:

- another experiment, preset or settings: refused, naming what differs;
- the same settings with finished or partial runs: refused unless ``resume`` (continue them) or
  ``overwrite`` (delete them and start over);
- ``resume`` under another world size (``torchrun`` processes) or provenance (noise source,
  fused mode, versions, commit): refused; the checkpoint of each run is checked against the
  settings too (:func:`noisyact.training.trainer.resume_conflicts`), so a hand-edited
  ``config.json`` cannot mix two settings in one run;
- a damaged ``config.json`` is named; ``overwrite`` deletes it with the rest.

While a run is going, the folder is locked (``flock`` on ``.lock``): a second process gets a clear
error instead of interleaving its metrics with the first's.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write_json

LOCK_NAME = ".lock"
# provenance keys a resume must not change (``dirty`` is recorded, not compared)
PINNED = ("noise_source", "fused_mode", "torch", "noisyact", "commit")


class RunFolderError(ValueError):
    """A run folder that this run must not write to (the message says why and what to do)."""


@lru_cache(maxsize=1)
def _git_commit() -> tuple[str | None, bool]:
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None, False
        status = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."],
                                capture_output=True, text=True, timeout=10)
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def provenance() -> dict[str, Any]:
    """What besides the settings determines a run's numbers, as far as it can be known."""
    from .. import __version__, fused_mode, noise_source

    commit, dirty = _git_commit()
    return {"noise_source": noise_source(), "fused_mode": fused_mode(),
            "torch": torch.__version__, "noisyact": __version__, "commit": commit,
            "dirty": dirty}


def command_line() -> str:
    """The command that started this process, as a user would type it."""
    import shlex
    import sys

    argv = list(sys.argv)
    if argv and argv[0].endswith(("noisyact", "__main__.py")):
        argv[0] = "noisyact"
    return shlex.join(argv)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path} is damaged ({exc}); delete the folder or use --overwrite"
                             ) from None


def read_config(path: Path) -> dict[str, Any]:
    """A folder's ``config.json``, its structure checked: a :class:`RunFolderError` naming the
    file and the field for a damaged or hand-broken one (``"seeds": "abc"``)."""
    config = _read_json(path)
    damaged = "; delete the folder or use --overwrite"
    if not isinstance(config, dict):
        raise RunFolderError(f"{path} is damaged (not a JSON object){damaged}")
    if not isinstance(config.get("experiment"), str):
        raise RunFolderError(f"{path} is damaged (no experiment name){damaged}")
    if not isinstance(config.get("settings", {}), dict):
        raise RunFolderError(f"{path} is damaged (settings is not an object){damaged}")
    for key, least in (("seeds", 1), ("first_seed", 0), ("world_size", 1)):
        v = config.get(key, least)
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise RunFolderError(f"{path} is damaged ({key}: {v!r} is not an integer >= "
                                 f"{least}){damaged}")
    return config


def _differences(old: dict[str, Any], new: dict[str, Any], keys: Any = None) -> list[str]:
    keys = sorted(set(old) | set(new)) if keys is None else keys
    return [f"{k}: {old.get(k)!r} in the folder, {new.get(k)!r} now" for k in keys
            if old.get(k) != new.get(k)]


class RunFolder:
    """The output folder of one ``noisyact run``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"

    def started_runs(self) -> list[Path]:
        """Run folders (``ROW/seedK``) holding anything: finished, partial or just begun."""
        if not self.path.is_dir():
            return []
        return sorted(d for d in self.path.glob("*/seed*") if d.is_dir() and any(d.iterdir()))

    def check(self, config: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
        """Refuse (:class:`RunFolderError`) a run that must not write here; writes nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--out {self.path} is a file, not a folder")
        if not self.config_path.exists():
            others = [p.name for p in self.path.iterdir() if p.name != LOCK_NAME] \
                if self.path.is_dir() else []
            if others:
                raise RunFolderError(f"--out {self.path} is not empty and has no config.json "
                                     "(not a noisyact run folder); choose another --out")
            return
        if overwrite:  # whatever the old config.json holds, even a damaged one: deleted
            return
        old = read_config(self.config_path)
        start_over = "use --overwrite to delete them and start over, or choose another --out"
        if old.get("experiment") != config["experiment"]:
            raise RunFolderError(f"{self.path} holds a {old.get('experiment')!r} run, not "
                                 f"{config['experiment']!r}; choose another --out")
        # first_seed: a folder holds one range of seeds (absent in older folders: 0)
        diff = _differences({"preset": old.get("preset"), "first_seed": old.get("first_seed", 0),
                             **(old.get("settings") or {})},
                            {"preset": config["preset"], "first_seed": config.get("first_seed", 0),
                             **config["settings"]})
        if diff:
            raise RunFolderError(f"{self.path} holds a run with other settings ("
                                 + "; ".join(diff) + f"); {start_over}")
        started = self.started_runs()
        if not resume:
            if started:
                names = ", ".join(str(d.relative_to(self.path)) for d in started[:4])
                raise RunFolderError(f"{self.path} holds finished or partial runs ({names}"
                                     f"{', ...' if len(started) > 4 else ''}); use --resume to "
                                     f"keep and continue them, or {start_over}")
            return
        diff = _differences({"world_size": old.get("world_size", 1)},
                            {"world_size": config.get("world_size", 1)})
        diff += _differences(old.get("provenance") or {}, config["provenance"], PINNED)
        if diff and started:
            raise RunFolderError(f"cannot resume {self.path} under another setup ("
                                 + "; ".join(diff) + "): its numbers would mix two setups; "
                                 f"{start_over}")

    def clear(self) -> None:
        """Delete a run folder's contents (only a noisyact run folder: it has config.json)."""
        if not self.config_path.exists():
            return
        for p in self.path.iterdir():
            if p.name == LOCK_NAME:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def remove_partial_writes(self) -> list[Path]:
        """Delete the temporary files of atomic writes that a killed process left (only with
        the folder's lock held: no other process is writing them); return them."""
        left = sorted(self.path.glob("**/.*.tmp")) if self.path.is_dir() else []
        for p in left:
            p.unlink(missing_ok=True)
        return left

    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config.json``. A resume may add seeds (the rest was checked equal): the
        seeds a folder was started with stay recorded, and each addition made once runs had
        finished (so after their numbers could be seen) is recorded in ``seeds_added`` with the
        date and the number of runs finished before it."""
        if self.config_path.exists():
            old = read_config(self.config_path)
            before, now = int(old.get("seeds", 1)), int(config["seeds"])
            added = list(old.get("seeds_added", []))
            finished = len(list(self.path.glob("*/seed*/final.json")))
            if now > before and finished:
                added.append({"seeds": [before, now], "at": config.get("created"),
                              "runs_finished_before": finished})
            config = {**config, "seeds": max(before, now),
                      "created": old.get("created", config.get("created")),
                      **({"seeds_added": added} if added else {})}
        atomic_write_json(config, self.config_path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's exclusive lock, or fail at once if another process holds it.
        A lock that cannot be written (a full disk) is a :class:`RunFolderError` that leaves
        neither the lock file nor a folder it had to create."""
        new_dirs = [d for d in (self.path, *self.path.parents) if not d.exists()]
        lock = self.path / LOCK_NAME

        def cannot_write(exc: OSError) -> RunFolderError:
            return RunFolderError(f"cannot write to --out {self.path}: {exc.strerror}")

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            _remove_empty(new_dirs)
            raise cannot_write(exc) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise RunFolderError(f"{self.path} is in use by another noisyact process "
                                     f"(pid {holder}); wait for it or choose another --out"
                                     ) from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            except OSError as exc:
                lock.unlink(missing_ok=True)  # ours (we hold it): no empty lock left behind
                _remove_empty(new_dirs)
                raise cannot_write(exc) from None
            yield
        finally:
            os.close(fd)  # releases the lock


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the folders of ``dirs`` (innermost first) that are empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


__all__ = ["RunFolder", "RunFolderError", "command_line", "provenance", "read_config"]
