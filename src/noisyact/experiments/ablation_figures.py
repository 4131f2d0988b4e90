"""The figures of the ablation's (c, α) grid: heat maps and one line plot per axis."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

__all__ = ["Cells", "grid_figures"]

#: (c, α) → {"score": test scores over seeds, "left": 1/0 per seed (left the plateau)}
Cells = dict[tuple[float, float], dict[str, list[float]]]


def grid_figures(out_dir: Path, cells: Cells, task: str) -> list[str]:
    """Heat maps (mean test score; fraction of seeds that left the plateau) over (c, α) and one
    line plot per axis, with the paper's values (c = 0.5; α = 1.1 gates, 1.15 units) marked;
    written to ``out_dir``, returned as Markdown image lines."""
    if not any(v["score"] for v in cells.values()):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = sorted({c for c, _ in cells})
    alphas = sorted({a for _, a in cells})
    label = "test error %" if task == "unique-count" else "test perplexity"
    lines = []

    def mean(v: list[float]) -> float:
        return statistics.fmean(v) if v else math.nan

    maps = [("score", f"mean {label}", "grid_score.png")]
    if task == "unique-count":
        maps.append(("left", "fraction of seeds that left the plateau", "grid_plateau.png"))
    for key, title, name in maps:
        z = [[mean(cells.get((c, a), {}).get(key, [])) for c in cs] for a in alphas]
        fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(cs), 1.0 + 0.6 * len(alphas)))
        im = ax.imshow(z, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(cs)), [f"{c:g}" for c in cs])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("c (Eq. 9)")
        ax.set_ylabel("α (Eq. 12), gates and units")
        for i, row in enumerate(z):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2g}", ha="center", va="center", color="w", fontsize=7)
                paper = cs[j] == 0.5 and alphas[i] in (1.1, 1.15)
                if paper:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                               edgecolor="red", linewidth=2))
        fig.colorbar(im, ax=ax)
        ax.set_title(f"{title} (red: the paper's c = 0.5, α = 1.1 / 1.15)", fontsize=8)
        fig.tight_layout()
        fig.savefig(Path(out_dir) / name, dpi=110)
        plt.close(fig)
        lines.append(f"![{title}]({name})")

    for axis, xs, others, name in (("c", cs, alphas, "grid_c.png"),
                                   ("α", alphas, cs, "grid_alpha.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for o in others:
            key = (lambda x, o=o: (x, o)) if axis == "c" else (lambda x, o=o: (o, x))
            vals = [cells.get(key(x), {}).get("score", []) for x in xs]
            m = [mean(v) for v in vals]
            s = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            other = "α" if axis == "c" else "c"
            ax.errorbar(xs, m, yerr=s, marker="o", capsize=2, label=f"{other} = {o:g}")
        for v in ((0.5,) if axis == "c" else (1.1, 1.15)):
            ax.axvline(v, color="red", linestyle="--", linewidth=1)
        if axis == "c":
            ax.set_xscale("log")
        ax.set_xlabel(f"{axis} (red: the paper's value)")
        ax.set_ylabel(f"{label} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(Path(out_dir) / name, dpi=110)
        plt.close(fig)
        lines.append(f"![{label} against {axis}]({name})")
    return lines
