"""Results tables (ours, mean ± std over seeds, beside the paper) and learning-curve plots."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text


@dataclass
class RowResult:
    """The finished seeds of one row."""

    row: str
    finals: list[dict[str, Any]] = field(default_factory=list)
    curves: list[list[dict[str, Any]]] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)  # timing.json, where written

    def hours(self) -> list[float]:
        """Wall-clock hours of every finished seed that recorded it."""
        return [float(t["wall_s"]) / 3600 for t in self.timings if t.get("wall_s") is not None]

    def values(self, key: str) -> list[float]:
        """``key`` of every finished seed that has it (failed seeds have none)."""
        return [float(f[key]) for f in self.finals if f.get(key) is not None]


def mean_std(values: Sequence[float]) -> str:
    """'m ± s' with the sample standard deviation; 'm' for one value; '—' when empty."""
    if not values:
        return "—"
    m = statistics.fmean(values)
    digits = 2 if abs(m) < 1000 else 0
    if len(values) == 1:  # one seed: no spread to show
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def read_json(path: Path) -> Any:
    """A JSON file of a run folder, with a one-line error naming it if it is damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); rerun that run or delete it") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, with a one-line error naming a damaged line."""
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {i} is damaged ({exc}); rerun that run or "
                                 "delete it") from None
    return records


def _seed_number(path: Path) -> int:
    digits = path.name[len("seed"):]
    return int(digits) if digits.isdigit() else -1


def collect(out_dir: str | Path, rows: Sequence[str]) -> list[RowResult]:
    """Read ``<out>/<row>/seed*/final.json``, ``metrics.jsonl`` and ``timing.json`` per row."""
    out_dir = Path(out_dir)
    results = []
    for row in rows:
        rr = RowResult(row)
        for seed_dir in sorted((out_dir / row).glob("seed*"), key=_seed_number):
            final = seed_dir / "final.json"
            if final.exists():
                rr.finals.append(read_json(final))
                metrics = seed_dir / "metrics.jsonl"
                rr.curves.append(read_jsonl(metrics) if metrics.exists() else [])
                timing = seed_dir / "timing.json"
                if timing.exists():
                    rr.timings.append(read_json(timing))
        results.append(rr)
    return results


def partial_note(results: Sequence[RowResult], seeds: int) -> str | None:
    """The mark of a folder in which fewer than every row's ``seeds`` runs have finished."""
    expected = len(results) * seeds
    finished = sum(len(r.finals) for r in results)
    if finished >= expected:
        return None
    return (f"**Partial: {finished} of {expected} runs have finished** (the others are "
            "running, were interrupted or not started); the tables show the finished ones.")


def results_table(results: Sequence[RowResult], columns: Sequence[tuple[str, str]],
                  paper: dict[str, dict[str, str]]) -> str:
    """Markdown table: one line per row, each metric ours (mean ± std) beside the paper's."""
    timed = any(rr.hours() for rr in results)
    head = ["row", "seeds"]
    for _key, label in columns:
        head += [f"{label} (ours)", f"{label} (paper)"]
    hours = [h for rr in results for h in rr.hours()]
    in_minutes = bool(hours) and max(hours) < 1.0
    if timed:
        head.append("minutes per seed" if in_minutes else "hours per seed")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rr in results:
        failed = sum(1 for f in rr.finals if f.get("failed"))
        cells = [rr.row, f"{len(rr.finals)} ({failed} failed)" if failed else str(len(rr.finals))]
        for key, _ in columns:
            vals = rr.values(key)
            shown = mean_std(vals)
            if 0 < len(vals) < len(rr.finals):  # some seeds have no value (never reached it)
                shown += f" (n={len(vals)})"
            cells += [shown, paper.get(rr.row, {}).get(key, "—")]
        if timed:
            cells.append(mean_std([h * 60 for h in rr.hours()] if in_minutes else rr.hours()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(results: Sequence[RowResult], key: str, label: str, path: str | Path,
                title: str = "", logy: bool = False) -> Path | None:
    """Mean (line) and min-max band over seeds of ``key`` against update steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = False
    for rr in results:
        series: dict[int, list[float]] = {}
        for curve in rr.curves:
            for rec in curve:
                v = rec.get(key)
                if v is not None and math.isfinite(float(v)):
                    series.setdefault(int(rec["step"]), []).append(float(v))
        if not series:
            continue
        steps = sorted(series)
        mean = [statistics.fmean(series[s]) for s in steps]
        n = len(rr.curves)
        ax.plot(steps, mean, label=f"{rr.row} ({n} seed{'s' if n != 1 else ''})")
        ax.fill_between(steps, [min(series[s]) for s in steps], [max(series[s]) for s in steps],
                        alpha=0.15)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("updates")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # whole updates
    ax.set_ylabel(label)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(out_dir: str | Path, title: str, body: Sequence[str]) -> Path:
    """Write ``results.md`` atomically."""
    path = Path(out_dir) / "results.md"
    atomic_write_text(f"# {title}\n\n" + "\n\n".join(body) + "\n", path)
    return path
