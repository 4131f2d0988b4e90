"""Command line: ``noisyact list | run | report`` (argument parsing only)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from . import experiments
from .experiments.base import report_settings
from .training.runner import RunError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="noisyact", description="Noisy Activation Functions "
                                 "(Gulcehre et al., 2016): run the paper's experiments.")
    sub = ap.add_subparsers(dest="command")
    sub.add_parser("list", help="list the experiments and their presets")
    run = sub.add_parser("run", help="run an experiment (default: unique-count, quick)")
    run.add_argument("experiment", nargs="?", default=experiments.DEFAULT,
                     help=f"one of {', '.join(experiments.names())} (default "
                          f"{experiments.DEFAULT}; `noisyact list` describes them)")
    run.add_argument("--preset", default="quick",
                     help="smoke | quick | paper (some experiments have more, see `list`)")
    run.add_argument("--seeds", type=int, default=None, help="number of seeds (preset default)")
    run.add_argument("--first-seed", type=int, default=0, metavar="K",
                     help="run seeds K, K+1, ... (default 0): a replication with fresh seeds")
    run.add_argument("--out", default=None, help="output folder (default runs/EXP-PRESET)")
    run.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                     help="where to train (default cpu; under torchrun each rank takes its GPU)")
    run.add_argument("--resume", action="store_true",
                     help="keep finished runs and continue interrupted ones")
    run.add_argument("--overwrite", action="store_true",
                     help="delete the earlier run in --out and start over")
    run.add_argument("--jobs", type=int, default=1,
                     help="train this many (row, seed) runs at once, in worker processes")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--data-dir", default=None,
                     help="folder with the experiment's data (same as data_dir=...)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="preset settings to change")
    rep = sub.add_parser("report", help="rewrite results.md and plots of run folders, and the "
                         "results pages generated from them")
    rep.add_argument("dirs", nargs="+", metavar="DIR",
                     help="a run folder, or a folder of run folders (e.g. results/)")
    rep.add_argument("--docs", default=None, metavar="FILE",
                     help="also regenerate the marked tables of this page (docs/results.md)")
    rep.add_argument("--readme", default=None, metavar="FILE",
                     help="also regenerate the results summary of this README")
    rep.add_argument("--check", action="store_true",
                     help="write nothing; exit 1 if --docs/--readme or a folder's results.md "
                          "are out of date, or a folder's final.json disagrees with its "
                          "metrics.jsonl")
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # key=value overrides may come before or after the options
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if e.startswith("-") or "=" not in e or args.command != "run"]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command in (None, "list"):
        if args.command is None:
            print("usage: noisyact {list,run,report} ...  (noisyact run: the default experiment)")
        for name in experiments.names():
            _describe(experiments.get(name))
        return 0
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM stops as Ctrl-C does (a handler can only be set from the main thread)
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        if args.command == "run":
            if "=" in args.experiment:  # `noisyact run key=value`: the default experiment
                args.overrides.insert(0, args.experiment)
                args.experiment = experiments.DEFAULT
            exp = experiments.get(args.experiment)
            if args.data_dir is not None:
                args.overrides.append(f"data_dir={args.data_dir}")
            out = experiments.run_experiment(
                exp, args.preset, seeds=args.seeds, first_seed=args.first_seed, out=args.out,
                device=args.device, resume=args.resume, overwrite=args.overwrite, jobs=args.jobs,
                overrides=args.overrides, progress=not args.no_progress)
            results = out / "results.md"
            if results.exists():
                print(results.read_text())
                print(f"results: {results}")
            return 0
        return _report(args)
    except (ValueError, FileExistsError, RunError) as exc:
        print(f"noisyact: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a folder gone: one line naming the file
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"noisyact: error: {exc.strerror or exc}{where}; finished runs and checkpoints are "
              "kept: fix it and continue with the same command and --resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        what = "continue with the same command and --resume" if args.command == "run" else \
            "run it again"
        print(f"\nnoisyact: stopped by {signal.Signals(signum).name}; finished runs and "
              f"checkpoints are kept: {what}", file=sys.stderr)
        return 128 + signum
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it stops as it does on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _describe(exp: experiments.Experiment, width: int = 100) -> None:
    """An experiment for `noisyact list`: its name and paper reference, the first sentence of
    its description, its presets and rows (wrapped; long row lists shortened)."""
    import textwrap

    what = exp.description.split(": ", 1)[-1].split(". ")[0].rstrip(".")
    print(f"{exp.name} ({exp.paper_table})" if exp.paper_table else exp.name)
    rows = list(exp.rows)
    shown = ", ".join(rows) if len(rows) <= 12 else (
        ", ".join(rows[:10]) + f", ... ({len(rows)} rows; `rows=` picks some)")
    for label, text in (("", what), ("presets: ", ", ".join(exp.presets)), ("rows: ", shown)):
        print(textwrap.fill(label + text, width, initial_indent="  ",
                            subsequent_indent="    "))


def _report(args: argparse.Namespace) -> int:
    from .experiments import publish

    folders = publish.find(args.dirs)
    if not folders:
        raise ValueError(f"no run folder (with config.json) in {' '.join(args.dirs)}")
    if args.check:
        pubs = [publish.load(f) for f in folders]
        stale = []
        problems = [msg for f in folders for msg in publish.folder_problems(f)]
        for msg in problems:
            print(msg, file=sys.stderr)
        if args.docs:
            page = Path(args.docs)
            if publish.render_results_page(page.read_text(), pubs, page) != page.read_text():
                stale.append(args.docs)
            stale += [str(f) for f in publish.stale_figures(pubs, page.parent)]
        if args.readme:
            readme, page = Path(args.readme), Path(args.docs or "docs/results.md")
            if publish.render_readme(readme.read_text(), pubs, readme, page) != readme.read_text():
                stale.append(args.readme)
        for name in stale:
            print(f"{name} is out of date: run `noisyact report {' '.join(args.dirs)} "
                  f"--docs ... --readme ...`", file=sys.stderr)
        return 1 if stale or problems else 0
    for folder in folders:
        cfg = publish.load(folder).config
        path = experiments.write_report(experiments.get(cfg["experiment"]), folder,
                                        report_settings(cfg))
        if len(folders) == 1 and not (args.docs or args.readme):
            print(path.read_text())
        else:
            print(f"wrote {path}")
    for path in publish.publish(folders, Path(args.docs) if args.docs else None,
                                Path(args.readme) if args.readme else None):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
