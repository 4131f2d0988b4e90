"""Command line: ``noisyact list | run | report`` (argument parsing only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import experiments


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="noisyact", description="Noisy Activation Functions "
                                 "(Gulcehre et al., 2016): run the paper's experiments.")
    sub = ap.add_subparsers(dest="command")
    sub.add_parser("list", help="list the experiments and their presets")
    run = sub.add_parser("run", help="run an experiment (default: unique-count, quick)")
    run.add_argument("experiment", nargs="?", default=experiments.DEFAULT)
    run.add_argument("--preset", default="quick",
                     help="smoke | quick | paper (some experiments have more, see `list`)")
    run.add_argument("--seeds", type=int, default=None, help="number of seeds (preset default)")
    run.add_argument("--out", default=None, help="output folder (default runs/EXP-PRESET)")
    run.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
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
    rep = sub.add_parser("report", help="rewrite results.md and plots of a run folder")
    rep.add_argument("dir")
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
            exp = experiments.get(name)
            print(f"{name:22s} presets: {', '.join(exp.presets)}; rows: {', '.join(exp.rows)}")
        return 0
    try:
        if args.command == "run":
            if "=" in args.experiment:  # `noisyact run key=value`: the default experiment
                args.overrides.insert(0, args.experiment)
                args.experiment = experiments.DEFAULT
            exp = experiments.get(args.experiment)
            if args.data_dir is not None:
                args.overrides.append(f"data_dir={args.data_dir}")
            out = experiments.run_experiment(
                exp, args.preset, seeds=args.seeds, out=args.out, device=args.device,
                resume=args.resume, overwrite=args.overwrite, jobs=args.jobs,
                overrides=args.overrides, progress=not args.no_progress)
            results = out / "results.md"
            if results.exists():
                print(results.read_text())
                print(f"results: {results}")
            return 0
        folder = Path(args.dir)
        cfg_path = folder / "config.json"
        if not cfg_path.exists():
            raise ValueError(f"{folder} has no config.json: not a noisyact run folder")
        cfg = json.loads(cfg_path.read_text())
        path = experiments.write_report(experiments.get(cfg["experiment"]), folder,
                                        cfg["settings"])
        print(path.read_text())
        return 0
    except (ValueError, FileExistsError) as exc:
        print(f"noisyact: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
