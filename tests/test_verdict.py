"""The verdict rule on constructed numbers, the t quantiles it uses, and the generated pages."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from noisyact import cli
from noisyact.experiments import publish
from noisyact.training.verdict import (
    DOES_NOT_HOLD,
    HOLDS,
    UNDECIDED,
    Claim,
    judge,
    seeds_needed,
    t_quantile,
    welch_interval,
)

LOWER = Claim("NAN", "reference", "test_ppl", "test ppl")
HIGHER = Claim("NAH", "reference", "test_acc", "test acc %", lower_is_better=False)


def _finals(key, values):
    return [{key: v} for v in values]


@pytest.mark.parametrize(("p", "df", "expected"), [
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 10, 2.2281),
    (0.975, 30, 2.0423), (0.95, 5, 2.0150), (0.975, 1e7, 1.9600), (0.025, 3, -3.1824)])
def test_t_quantiles_match_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-4)


def test_welch_interval_by_hand():
    a, b = [3.0, 4.0, 5.0], [1.0, 1.5, 2.0, 2.5]
    diff, lo, hi = welch_interval(a, b)
    va, vb = 1.0 / 3, (5 / 12) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    assert diff == pytest.approx(2.25)
    assert (lo, hi) == pytest.approx((2.25 - half, 2.25 + half))


def test_clear_win_holds():
    v = judge(LOWER, {"NAN": _finals("test_ppl", [108.0, 109.0, 108.5]),
                      "reference": _finals("test_ppl", [115.0, 116.0, 115.2])})
    assert v.verdict == HOLDS and v.low > 0 and v.diff == pytest.approx(6.9)


def test_clear_loss_does_not_hold():
    v = judge(LOWER, {"NAN": _finals("test_ppl", [120.0, 121.0]),
                      "reference": _finals("test_ppl", [115.0, 116.0])})
    assert v.verdict == DOES_NOT_HOLD and v.high < 0


def test_higher_is_better_direction():
    win = judge(HIGHER, {"NAH": _finals("test_acc", [50.0, 51.0, 50.5]),
                         "reference": _finals("test_acc", [40.0, 41.0, 40.5])})
    loss = judge(HIGHER, {"NAH": _finals("test_acc", [40.0, 41.0, 40.5]),
                          "reference": _finals("test_acc", [50.0, 51.0, 50.5])})
    assert (win.verdict, loss.verdict) == (HOLDS, DOES_NOT_HOLD)
    assert win.diff == pytest.approx(10.0) and loss.diff == pytest.approx(-10.0)


def test_overlap_is_undecided_and_says_how_many_seeds():
    v = judge(LOWER, {"NAN": _finals("test_ppl", [108.0, 119.0]),
                      "reference": _finals("test_ppl", [115.0, 116.0])})
    assert v.verdict == UNDECIDED and v.low < 0 < v.high
    assert "seeds per side" in v.reason
    n = seeds_needed([115.0, 116.0], [108.0, 119.0])
    assert n is not None and n > 2


@pytest.mark.parametrize(("a", "b"), [([115.0, 116.0], [108.0, 119.0]), ([1.0, 3.0], [2.0, 2.1]),
                                      ([0.5, 0.7, 0.9], [0.4, 0.5, 0.9]), ([1.0, 1.0], [2.0, 2.0]),
                                      ([10.0, 10.01], [10.0, 30.0])])
@pytest.mark.parametrize("power", [0.5, 0.8])
def test_seeds_needed_is_the_first_n_with_the_power(a, b, power):
    """The smallest n per side (same means and spreads) at which a true difference equal to the
    observed one is decided with probability ``power`` (t approximation): n with
    (t_0.975 + t_power)·SE(n) < diff, every n below it not; at power 0.5 that is the n whose
    interval around the observed difference excludes zero."""
    diff = abs(statistics.fmean(a) - statistics.fmean(b))
    va, vb = statistics.variance(a), statistics.variance(b)

    def half(n):
        df = max((n - 1) * (va + vb) ** 2 / (va * va + vb * vb) if va + vb > 0 else 2 * n - 2,
                 1.0)
        z = t_quantile(0.975, df) + (t_quantile(power, df) if power != 0.5 else 0.0)
        return z * math.sqrt((va + vb) / n)

    n = seeds_needed(a, b, most=200_000, power=power)
    assert n is not None and half(n) < diff
    assert n == 2 or half(n - 1) >= diff
    assert all(half(k) > half(k + 1) for k in range(2, min(n, 40)))  # so no n below decides
    assert seeds_needed(a, b, most=n - 1, power=power) is None if n > 2 else True
    if power == 0.8:
        assert n >= seeds_needed(a, b, most=200_000, power=0.5)  # more seeds for more power


def test_welch_p_and_holm():
    from noisyact.training.verdict import Verdict, holm, welch_p

    # p < 0.05 exactly when the 95 % interval excludes zero
    for a, b in (([115.0, 116.0, 115.5], [108.0, 109.0, 108.5]), ([1.0, 3.0], [2.0, 2.1]),
                 ([0.5, 0.7, 0.9], [0.4, 0.5, 0.9])):
        _, low, high = welch_interval(a, b)
        assert (welch_p(a, b) < 0.05) == (low > 0 or high < 0)
    # the values of scipy.stats.ttest_ind(a, b, equal_var=False).pvalue (SciPy 1.x)
    assert welch_p([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.5]) == pytest.approx(0.157914268,
                                                                                 rel=1e-6)
    assert welch_p([115.0, 116.0, 115.5], [108.0, 109.0, 108.5]) == pytest.approx(6.78691e-5,
                                                                                   rel=1e-4)

    def v(p, verdict="holds"):
        return Verdict(LOWER, None, None, 1.0, 0.5, 1.5, verdict, "", p)  # type: ignore[arg-type]

    # m = 4: thresholds 0.0125, 0.0167, 0.025, 0.05 in order of increasing p
    family = [v(0.02), v(0.001), v(0.04, "does not hold"), v(0.012)]
    assert holm(family) == ["holds", "holds", "does not hold", "holds"]  # each under its step
    family = [v(0.03), v(0.001), v(0.014, "does not hold"), v(0.04)]
    # 0.001 <= 0.0125, 0.014 <= 0.0167, then 0.03 > 0.025: it and 0.04 are undecided
    assert holm(family) == ["undecided", "holds", "does not hold", "undecided"]
    assert holm([v(0.001), v(math.nan, "undecided")]) == ["holds", "undecided"]
    assert holm([v(0.03), v(0.04)]) == ["undecided", "undecided"]


def test_one_seed_is_always_undecided_even_with_a_large_gap():
    v = judge(LOWER, {"NAN": _finals("test_ppl", [50.0]),
                      "reference": _finals("test_ppl", [115.0, 116.0, 117.0])})
    assert v.verdict == UNDECIDED and "one seed" in v.reason and math.isnan(v.low)


def test_identical_deterministic_sides_are_undecided():
    v = judge(LOWER, {"NAN": _finals("test_ppl", [55.44] * 3),
                      "reference": _finals("test_ppl", [55.44] * 3)})
    assert v.verdict == UNDECIDED and "no difference" in v.reason


def test_failed_seeds_are_not_counted_and_missing_values_can_stand_for_the_budget():
    claim = Claim("noisy", "regular", "updates_to_solve", "updates", missing_as="steps")
    v = judge(claim, {"noisy": [{"updates_to_solve": 800, "steps": 3000},
                                {"updates_to_solve": 900, "steps": 3000},
                                {"failed": "nan loss"}],
                      "regular": [{"updates_to_solve": None, "steps": 3000}] * 2})
    assert v.better.n == 2 and v.than.values == (3000.0, 3000.0)
    assert v.verdict == HOLDS


def test_no_finished_seed_is_undecided():
    v = judge(LOWER, {"NAN": [], "reference": _finals("test_ppl", [1.0, 2.0])})
    assert v.verdict == UNDECIDED and "no finished seed" in v.reason


def _fake_ptb_folder(root: Path, name: str, values: dict[str, list[float]]) -> Path:
    folder = root / name
    rows = list(values)
    cfg = {"experiment": "ptb", "preset": "paper", "seeds": max(map(len, values.values())),
           "settings": {**publish.get("ptb").presets["paper"].to_dict(), "rows": rows},
           "provenance": {"commit": "0123456789abcdef", "torch": "2.13.0+cpu",
                          "noise_source": "kernel", "dirty": False},
           "created": "2026-11-29T21:00:00Z"}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    for row, vals in values.items():
        for seed, v in enumerate(vals):
            d = folder / row / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "final.json").write_text(json.dumps({"test_ppl": v, "valid_ppl": v + 4}))
            (d / "timing.json").write_text(json.dumps({"wall_s": 3600.0,
                                                       "finished_at": "2026-11-29T22:00:00Z"}))
            (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "valid_ppl": v}) + "\n")
    return folder


def _pages(tmp_path: Path, readme_text: str) -> tuple[Path, Path]:
    """A docs page with the ptb heading and a README holding ``readme_text``, for ``report``."""
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    docs.write_text("# Results\n\n## ptb (Table 2)\n\nhand-written prose\n")
    readme = tmp_path / "README.md"
    readme.write_text(readme_text)
    return docs, readme


def test_generated_pages_carry_tables_and_verdicts(tmp_path):
    results = tmp_path / "results"
    _fake_ptb_folder(results, "ptb-paper", {"reference": [115.0, 116.0, 115.5],
                                            "NAN": [108.0, 108.5, 109.0]})
    docs, readme = _pages(tmp_path, "intro\n<!-- results-summary:start -->\nold\n"
                                    "<!-- results-summary:end -->\n")
    assert cli.main(["report", str(results), "--docs", str(docs), "--readme", str(readme)]) == 0
    page = docs.read_text()
    assert "<!-- generated:ptb-paper:start -->" in page and "hand-written prose" in page
    assert "| NAN < reference (test ppl) | 108.50 ± 0.50 (n=3) | 115.50 ± 0.50 (n=3) |" in page
    assert "**holds**" in page and "noisyact run ptb --preset paper --seeds 3" in page
    assert "2026-11-29" in page and "commit 0123456789" in page
    assert "hours per seed" in page and "| 1.00 ± 0.00 |" in page  # from timing.json
    summary = readme.read_text()
    assert "| Table 2 | NAN < reference (test ppl) | NAN 108.0 vs reference 115.6 |" in summary
    assert "**holds**" in summary and "no run folder yet" in summary  # other experiments
    assert "\nold\n" not in summary
    # the plot is copied beside the page and linked from there
    copy = docs.parent / "figures" / "ptb-paper" / "curves.png"
    assert copy.read_bytes() == (results / "ptb-paper" / "curves.png").read_bytes()
    assert "](figures/ptb-paper/curves.png)" in page
    # regenerating is idempotent, and --check sees a stale page or plot
    copy.write_bytes(b"old plot")
    assert cli.main(["report", str(results), "--docs", str(docs), "--check"]) == 1
    copy.write_bytes((results / "ptb-paper" / "curves.png").read_bytes())
    assert cli.main(["report", str(results), "--docs", str(docs), "--readme", str(readme),
                     "--check"]) == 0
    docs.write_text(page.replace("108.50", "100.00"))
    assert cli.main(["report", str(results), "--docs", str(docs), "--check"]) == 1


def test_committed_pages_are_generated_from_results():
    """docs/results.md and the README summary equal what `noisyact report` makes of results/."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "results").is_dir():
        pytest.skip("no results/ folder")
    args = ["report", str(root / "results"), "--docs", str(root / "docs" / "results.md"),
            "--readme", str(root / "README.md"), "--check"]
    assert cli.main(args) == 0, "run `noisyact report results --docs docs/results.md " \
                                "--readme README.md` and commit"


def test_report_names_a_damaged_metrics_line(tmp_path, capsys):
    folder = _fake_ptb_folder(tmp_path, "ptb-paper", {"reference": [115.0], "NAN": [108.0]})
    metrics = folder / "NAN" / "seed0" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 2, "valid_pp')
    assert cli.main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl line 2 is damaged" in err and len(err.strip().splitlines()) == 1


def test_a_run_without_the_metric_is_left_out_not_counted_as_the_budget():
    claim = Claim("noisy", "regular", "plateau_exit", "updates", missing_as="steps")
    v = judge(claim, {"noisy": [{"steps": 3000}, {"plateau_exit": 900, "steps": 3000}],
                      "regular": [{"plateau_exit": None, "steps": 3000}]})
    assert v.better.values == (900.0,) and v.than.values == (3000.0,)


def test_an_experiments_own_figures_are_linked_in_its_block(tmp_path):
    """Figures that a folder's results.md shows besides the curves (the ablation's heat maps) are
    copied and linked in the generated block, in results.md's order, with its captions."""
    results = tmp_path / "results"
    folder = _fake_ptb_folder(results, "ptb-paper", {"reference": [115.0, 116.0],
                                                     "NAN": [108.0, 108.5]})
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    docs.write_text("# Results\n\n## ptb (Table 2)\n")
    assert cli.main(["report", str(results), "--docs", str(docs)]) == 0
    # the report rewrites results.md; an experiment's figures() lines are kept in it
    (folder / "heat.png").write_bytes(b"\x89PNG fake")
    (folder / "line.png").write_bytes(b"\x89PNG other")
    with open(folder / "results.md", "a") as f:
        f.write("\n![a heat map](heat.png)\n\n![a line plot](line.png)\n")
    pub = publish.load(folder)
    assert publish.extra_figures(pub) == [("a heat map", "heat.png"), ("a line plot", "line.png")]
    block = publish.section(pub, docs.parent)
    heat = block.index("![ptb-paper: a heat map](figures/ptb-paper/heat.png)")
    line = block.index("![ptb-paper: a line plot](figures/ptb-paper/line.png)")
    assert block.index("](figures/ptb-paper/curves.png)") < heat < line


def test_summary_uses_a_folder_that_has_both_rows_of_the_headline_claim(tmp_path):
    """A second, more complete folder of the same experiment that ran other rows (e.g. a rerun
    of one row with more seeds) must not replace the headline's folder in the README summary."""
    results = tmp_path / "results"
    _fake_ptb_folder(results, "ptb-paper", {"reference": [115.0, 116.0], "NAN": [108.0, 108.5]})
    _fake_ptb_folder(results, "ptb-paper-hard", {"reference": [115.0, 116.0, 115.5],
                                                 "hard": [120.0, 121.0, 122.0]})
    docs, readme = _pages(tmp_path, "<!-- results-summary:start -->\n<!-- results-summary:end -->\n")
    assert cli.main(["report", str(results), "--docs", str(docs), "--readme", str(readme)]) == 0
    line = next(x for x in readme.read_text().splitlines() if x.startswith("| Table 2 |"))
    assert "(`ptb-paper`)" in line and "108.25 ± 0.35 (n=2)" in line


def test_the_ptb_rerun_reproduces_the_committed_seed():
    """docs/results.md says that results/ptb-paper-rerun (NAN seed 0 at the factorial's commit)
    reproduces results/ptb-paper's NAN seed 0 to the last digit: the two folders' rows come from
    the same model code."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "results"
    rerun, first = root / "ptb-paper-rerun" / "NAN" / "seed0", root / "ptb-paper" / "NAN" / "seed0"
    if not rerun.is_dir():
        pytest.skip("no results/ptb-paper-rerun")
    a, b = (json.loads((d / "final.json").read_text()) for d in (rerun, first))
    assert {k: v for k, v in a.items() if k != "train_tokens_per_s"} == \
        {k: v for k, v in b.items() if k != "train_tokens_per_s"}
    new, old = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
                for d in (rerun, first))
    assert [{k: v for k, v in r.items() if not k.startswith("train_eval")} for r in new] == old
