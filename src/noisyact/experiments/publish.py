"""The results pages, generated from committed run folders (``noisyact report --docs/--readme``).

Every table of ``docs/results.md`` and the README's summary is rendered here from the run
folders under ``results/`` (``config.json``, ``ROW/seedK/final.json``, ``timing.json``), so a
reader can regenerate each number, and a test checks that the committed pages are in sync.

In a page, a generated block sits between the marker lines ``<!-- generated:NAME:start -->`` and
``<!-- generated:NAME:end -->`` (NAME: the run folder's name, e.g. ``ptb-paper``); the README
summary between ``<!-- results-summary:start -->`` and ``<!-- results-summary:end -->``. Text
outside the markers is written by hand and kept.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..training.report import RowResult, collect, partial_note, read_json, results_table
from ..training.verdict import Verdict, format_p, holm, judge, verdict_table
from . import get, names

PRESET_RANK = {"smoke": 0, "quick": 1, "long": 2, "paper": 3}
SUMMARY = "results-summary"


@dataclass(frozen=True)
class Published:
    """One committed run folder, read."""

    path: Path
    config: dict[str, Any]
    results: list[RowResult]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def experiment(self) -> Any:
        return get(self.config["experiment"])

    @property
    def rank(self) -> tuple[int, int]:
        seeds = min((len(r.finals) for r in self.results), default=0)
        return PRESET_RANK.get(self.config.get("preset", ""), 1), seeds

    def finals(self) -> dict[str, list[dict[str, Any]]]:
        return {r.row: r.finals for r in self.results}

    def command(self) -> str:
        """The command that reproduces this folder (preset, seeds and the changed settings)."""
        exp, cfg = self.experiment, self.config
        preset = exp.presets[cfg["preset"]].to_dict() if cfg["preset"] in exp.presets else {}
        changed = [f"{k}={_value(v)}" for k, v in cfg["settings"].items()
                   if preset.get(k) != v and k != "seeds"]
        seeds = [str(cfg.get("seeds", 1))]
        if cfg.get("first_seed"):
            seeds += ["--first-seed", str(cfg["first_seed"])]
        return " ".join(["noisyact run", exp.name, "--preset", cfg["preset"], "--seeds", *seeds,
                         "--out", f"results/{self.name}", *changed])


def _value(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)


def load(path: str | Path) -> Published:
    """Read a run folder (its config and every finished seed)."""
    path = Path(path)
    config = read_json(path / "config.json")
    if not isinstance(config, dict) or "experiment" not in config or "settings" not in config:
        raise ValueError(f"{path / 'config.json'} is not a noisyact run configuration")
    exp = get(config["experiment"])
    rows = list(config["settings"].get("rows") or exp.rows)
    return Published(path, config, exp.complete(collect(path, rows)))


def find(paths: list[str | Path]) -> list[Path]:
    """Run folders among ``paths``: each path is one, or a folder of them (one level down)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.json").exists():
            found.append(p)
        elif p.is_dir():
            found += sorted(d for d in p.iterdir() if (d / "config.json").exists())
        else:
            raise ValueError(f"{p} is neither a run folder (no config.json) nor a folder of them")
    return found


def _when(pub: Published) -> str:
    finished = [t.get("finished_at", "") for r in pub.results for t in r.timings]
    started = pub.config.get("created", "")
    dates = sorted({d[:10] for d in [started, *finished] if d})
    if not dates:
        return "date not recorded"
    return dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def section(pub: Published, page_dir: Path) -> str:
    """The generated block of one run folder, with links relative to ``page_dir``."""
    exp, prov = pub.experiment, pub.config.get("provenance") or {}
    commit = prov.get("commit")
    setup = ", ".join(filter(None, [
        f"commit {commit[:10]}{' + local changes' if prov.get('dirty') else ''}" if commit
        else "", f"torch {prov['torch']}" if prov.get("torch") else "",
        f"noise source {prov['noise_source']}" if prov.get("noise_source") else ""]))
    partial = partial_note(pub.results, int(pub.config.get("seeds", 1)))
    first = int(pub.config.get("first_seed", 0))
    for add in pub.config.get("seeds_added", []):  # recorded by the run folder
        lo, hi = (first + n for n in add["seeds"])
        which = f"Seed {lo} was" if hi - lo == 1 else f"Seeds {lo}-{hi - 1} were"
        partial = ((partial + " ") if partial else "") + (
            f"{which} added on {str(add.get('at') or '?')[:10]}, after "
            f"{add['runs_finished_before']} runs had finished: chosen after their numbers could "
            "be seen.")
    parts = [f"`{pub.command()}` ({_when(pub)}{'; ' + setup if setup else ''}; run folder "
             f"`results/{pub.name}`)", *([partial] if partial else []),
             results_table(pub.results, exp.columns, exp.paper)]
    claims = [c for c in exp.claims if c.better in pub.finals() and c.than in pub.finals()]
    if claims:
        parts.append(verdict_table(claims, pub.finals()))
    copies = figure_copies(pub, page_dir)
    curves = copies.get("curves.png")
    if curves is not None:
        parts.append(f"![{pub.name} learning curves]({_rel(curves, page_dir)})")
    for alt, name in extra_figures(pub):  # an experiment's own figures (the ablation's grid)
        if name in copies:
            parts.append(f"![{pub.name}: {alt}]({_rel(copies[name], page_dir)})")
    return "\n\n".join(parts)


_FIGURE = re.compile(r"^!\[([^\]]*)\]\(([^)/]+\.png)\)$", re.MULTILINE)


def extra_figures(pub: Published) -> list[tuple[str, str]]:
    """(caption, file) of the figures the folder's results.md shows besides the learning curves,
    in its order."""
    page = pub.path / "results.md"
    if not page.is_file():
        return []
    return [(alt, name) for alt, name in _FIGURE.findall(page.read_text())
            if name != "curves.png"]


def figure_copies(pub: Published, page_dir: Path) -> dict[str, Path]:
    """Where the run folder's plots are copied beside the page (``figures/NAME/``), so that the
    page and the documentation site built from ``docs/`` show them: {file name: copy}."""
    return {png.name: page_dir / "figures" / pub.name / png.name
            for png in sorted(pub.path.glob("*.png"))}


def stale_figures(pubs: list[Published], page_dir: Path) -> list[Path]:
    """Copies of the plots that are missing or differ from the run folders'."""
    return [dst for pub in pubs for name, dst in figure_copies(pub, page_dir).items()
            if not dst.exists() or dst.read_bytes() != (pub.path / name).read_bytes()]


def folder_problems(folder: Path) -> list[str]:
    """What is inconsistent in a run folder: a seed whose ``final.json`` records another number
    of updates than its ``metrics.jsonl`` ends at, and a ``results.md`` that is not the one
    :func:`~noisyact.experiments.base.write_report` makes from the folder (rendered in a copy;
    the folder is not written)."""
    import json
    import tempfile

    from ..training.report import read_jsonl
    from .base import report_settings, write_report

    problems = []
    for final_path in sorted(folder.glob("*/seed*/final.json")):
        final, metrics = read_json(final_path), final_path.parent / "metrics.jsonl"
        if final.get("failed") or "steps" not in final or not metrics.exists():
            continue
        steps = [r["step"] for r in read_jsonl(metrics) if "step" in r]
        if steps and max(steps) != final["steps"]:
            problems.append(f"{final_path} records {final['steps']} updates, {metrics.name} ends "
                            f"at update {max(steps)}: the folder mixes two runs; rerun that seed")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / folder.name
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("checkpoint.pt", ".*"))
        fresh = write_report(get(config["experiment"]), copy, report_settings(config)).read_text()
    committed = folder / "results.md"
    if not committed.exists() or committed.read_text() != fresh:
        problems.append(f"{committed} is not the report of its folder: run `noisyact report "
                        f"{folder}`")
    return problems


def _rel(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()


def summary(pubs: list[Published], page_dir: Path, results_page: Path) -> str:
    """The README's summary: per paper table, the headline claim, the paper's numbers, ours
    (from the run folder the experiment names as its headline), the verdict with its p-value,
    and the verdict after Holm's correction over all the headline claims of the table."""
    link = _rel(results_page, page_dir)
    # (paper table, claim, paper's numbers, ours, the verdict or None, link)
    rows: list[tuple[str, str, str, str, Verdict | None, str]] = []
    for name in names():
        exp = get(name)
        anchor = f"[{name}]({link}#{_anchor(f'{name} ({exp.paper_table})')})"
        mine = sorted((p for p in pubs if p.config["experiment"] == name), key=lambda p: p.rank)
        if not exp.claims:
            rows.append((exp.paper_table, "no comparative claim (figures)", "—", "—", None,
                         anchor))
            continue
        claim = exp.claims[0]
        numbers = [exp.paper.get(row, {}).get(claim.metric) for row in (claim.better, claim.than)]
        paper = ("not in the paper" if not any(numbers) else
                 f"{claim.better} {numbers[0] or '—'} vs {claim.than} {numbers[1] or '—'}")
        if not mine:
            rows.append((exp.paper_table, claim.text, paper, "no run folder yet", None, anchor))
            continue
        named = [p for p in mine if p.name == exp.headline]
        # the folder the experiment names; without it (a page of other folders), the most
        # complete one among those that ran both rows of the claim
        best = named[0] if named else (
            [p for p in mine if {claim.better, claim.than} <= p.finals().keys()] or mine)[-1]
        v = judge(claim, best.finals())
        rows.append((exp.paper_table, claim.text, paper, f"{v.better} vs {v.than} (`{best.name}`)",
                     v, anchor))
    corrected = iter(holm([r[4] for r in rows if r[4] is not None]))
    lines = ["| paper | claim | paper's numbers | ours | verdict | p | verdict, Holm | details |",
             "|---|---|---|---|---|---|---|---|"]
    for table, text, paper, ours, v, anchor in rows:
        judged = ["—", "—", "—"] if v is None else [f"**{v.verdict}**", format_p(v.p),
                                                     next(corrected)]
        lines.append("| " + " | ".join([table, text, paper, ours, *judged, anchor]) + " |")
    return "\n".join(lines)


def _anchor(heading: str) -> str:
    """GitHub's and mkdocs' anchor of a markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return re.sub(r"\s+", "-", slug)


def _markers(name: str) -> tuple[str, str]:
    tag = name if name == SUMMARY else f"generated:{name}"
    return f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"


def fill(text: str, name: str, block: str, heading: str | None = None) -> str:
    """Replace the block between ``name``'s markers; if there are none, insert a marked block
    after the ``heading`` line (or at the end)."""
    start, end = _markers(name)
    marked = f"{start}\n{block}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: marked, text, count=1)
    if heading is not None:
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if line.strip() == heading or line.startswith(heading + " ("):
                return "\n".join([*lines[: i + 1], "", marked, *lines[i + 1:]])
    return text.rstrip("\n") + f"\n\n{marked}\n"


def render_results_page(text: str, pubs: list[Published], page: Path) -> str:
    """``docs/results.md`` with every run folder's block filled in."""
    for pub in pubs:
        exp = pub.experiment
        text = fill(text, pub.name, section(pub, page.parent), heading=f"## {exp.name}")
    return text


def render_readme(text: str, pubs: list[Published], readme: Path, page: Path) -> str:
    """The README with its results summary filled in."""
    return fill(text, SUMMARY, summary(pubs, readme.parent, page))


def publish(folders: list[Path], docs: Path | None = None, readme: Path | None = None
            ) -> list[Path]:
    """Regenerate the results page and/or the README summary from ``folders``; return the files
    written."""
    pubs = [load(f) for f in folders]
    written = []
    if docs is not None:
        docs.write_text(render_results_page(docs.read_text(encoding="utf-8"), pubs, docs),
                        encoding="utf-8")
        written.append(docs)
        for pub in pubs:
            for name, dst in figure_copies(pub, docs.parent).items():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(pub.path / name, dst)
                written.append(dst)
    if readme is not None:
        page = docs if docs is not None else readme.parent / "docs" / "results.md"
        readme.write_text(render_readme(readme.read_text(encoding="utf-8"), pubs, readme, page),
                          encoding="utf-8")
        written.append(readme)
    return written


__all__ = ["Published", "figure_copies", "find", "load", "publish", "render_readme",
           "render_results_page", "section", "stale_figures", "summary"]
