"""§6.1: exploratory analysis, a 3-layer MLP of 8 units on a mixture of three Gaussians.

The paper gives no data parameters and no numbers ("both solve the task almost perfectly"); its
figures show the learned per-unit derivatives (Fig. 5, normal noise, α = 1) and activations
(Fig. 6, half-normal noise, α = 1) of each layer. Here: 2-D points from three Gaussians with
different means and spreads, 3-way classification; rows tanh, NAN and NAH (α = 1, p per unit).
``figures`` redraws Fig. 5 and Fig. 6 from the trained noisy models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..modules import NoisyHardTanh
from ..training.checkpoint import load_checkpoint
from .base import ClassificationTask, Experiment, batch_generator
from .config import StepsConfig

# row -> the noise of its noisy hard-tanh units ("NAN", "NAH"); None: torch's tanh
ROWS: dict[str, str | None] = {"tanh": None, "NAN": "NAN", "NAH": "NAH"}
MEANS = ((-2.0, -1.0), (2.0, -1.0), (0.0, 2.0))
STDS = (0.7, 1.2, 0.9)


@dataclass(frozen=True)
class GaussiansConfig(StepsConfig):
    """Settings of the Gaussians experiment (defaults: the quick preset)."""

    rows: tuple[str, ...] = tuple(ROWS)
    seeds: int = 3
    batch_size: int = 128
    lr: float = 1e-2
    steps: int = 2000
    eval_every: int = 100
    ckpt_every: int = 500
    hidden: int = 8  # units per layer
    layers: int = 3  # hidden layers
    alpha: float = 1.0  # α of the noisy units (Eq. 12)
    c: float = 1.0  # c of the noisy units (Eq. 9)
    n_train: int = 3000  # training points (a fixed set)
    n_eval: int = 1000  # validation and test points each


QUICK = GaussiansConfig()
PRESETS = {
    "smoke": replace(QUICK, steps=40, eval_every=20, ckpt_every=20, seeds=1),
    "quick": QUICK,
    "paper": replace(QUICK, steps=20000, eval_every=500, ckpt_every=2000, seeds=5),
}


def mixture(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """n labelled points from the three Gaussians (balanced classes)."""
    y = torch.arange(n) % 3
    means, stds = torch.tensor(MEANS), torch.tensor(STDS)
    x = means[y] + stds[y, None] * torch.randn(n, 2, generator=gen)
    return x, y


def mlp(row: str, hidden: int, layers: int, alpha: float, c: float) -> nn.Sequential:
    """The MLP of a row: ``layers`` × (Linear, the row's unit), then a 3-way Linear."""
    variant = ROWS[row]
    mods: list[nn.Module] = []
    width = 2
    for _ in range(layers):
        mods.append(nn.Linear(width, hidden))
        mods.append(nn.Tanh() if variant is None else
                    NoisyHardTanh(variant, alpha=alpha, c=c, num_parameters=hidden, dim=1))
        width = hidden
    mods.append(nn.Linear(width, 3))
    return nn.Sequential(*mods)


class GaussiansTask(ClassificationTask):
    def __init__(self, row: str, cfg: GaussiansConfig, seed: int) -> None:
        self.row, self.cfg, self.seed = row, cfg, seed
        self.train_set = mixture(cfg.n_train, torch.Generator().manual_seed(1234))
        self.eval_sets = {s: mixture(cfg.n_eval, torch.Generator().manual_seed(1235 + i))
                          for i, s in enumerate(("valid", "test"))}

    def build_model(self) -> nn.Module:
        c = self.cfg
        return mlp(self.row, c.hidden, c.layers, c.alpha, c.c)

    def batch(self, step: int, rank: int, world_size: int) -> tuple[Tensor, Tensor]:
        gen = batch_generator(self.seed, step, rank)
        idx = torch.randint(0, self.cfg.n_train, (self.cfg.batch_size,), generator=gen)
        return self.train_set[0][idx], self.train_set[1][idx]


def _unit_curves(model: nn.Sequential, derivative: bool) -> list[tuple[Tensor, Tensor]]:
    """Per noisy layer: (x, φ or ∂φ/∂x) for every unit at 400 points of [-3, 3] (training mode)."""
    curves = []
    torch.manual_seed(0)
    for m in model:
        if not isinstance(m, NoisyHardTanh):
            continue
        m.train()
        x = torch.linspace(-3, 3, 400).unsqueeze(1).repeat(1, m.num_parameters).requires_grad_()
        y = m(x)
        if derivative:
            (g,) = torch.autograd.grad(y.sum(), x)
            curves.append((x.detach(), g))
        else:
            curves.append((x.detach(), y.detach()))
    return curves


class Gaussians(Experiment):
    def figures(self, out_dir: Path, cfg: GaussiansConfig) -> list[str]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lines = []
        for row, derivative, fig_no in (("NAN", True, 5), ("NAH", False, 6)):
            ck = out_dir / row / "seed0" / "checkpoint.pt"
            if row not in (cfg.rows or ROWS) or not ck.exists():
                continue
            model = mlp(row, cfg.hidden, cfg.layers, cfg.alpha, cfg.c)
            model.load_state_dict(load_checkpoint(ck)["model"])
            curves = _unit_curves(model, derivative)
            fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.4), sharey=True)
            for k, (ax, (x, y)) in enumerate(zip(axes, curves, strict=True)):
                for i in range(x.shape[1]):
                    ax.scatter(x[:, i], y[:, i], s=2, alpha=0.5, label=f"unit {i + 1}")
                ax.set_title(f"layer {k + 1}")
                ax.set_xlabel("x")
                ax.grid(alpha=0.3)
            axes[0].set_ylabel("∂φ/∂x" if derivative else "φ(x, ξ)")
            axes[-1].legend(fontsize=7, markerscale=4, loc="center left",
                            bbox_to_anchor=(1.0, 0.5), title="unit (p of its own)")
            what = "derivatives (normal noise)" if derivative else "activations (half-normal)"
            fig.suptitle(f"Fig. {fig_no} analogue: learned per-unit {what}, α = {cfg.alpha}")
            fig.tight_layout()
            name = f"fig{fig_no}_{row}.png"
            fig.savefig(out_dir / name, dpi=100)
            plt.close(fig)
            lines.append(f"![Fig. {fig_no} analogue]({name})")
        return lines


EXPERIMENT = Gaussians(
    task=GaussiansTask,
    name="gaussians",
    paper_table="§6.1, Figs. 5-6",
    claims=(),
    description=(
        "§6.1: 3-layer MLP (8 units per layer) on a mixture of three 2-D Gaussians, tanh vs "
        "noisy hard-tanh (α = 1, p per unit). Test error % (mean ± std over seeds)."
    ),
    presets=PRESETS,
    rows=tuple(ROWS),
    columns=[("test_error", "test error %"), ("test_nll", "test NLL")],
    curve=("valid_error", "validation error %"),
    paper={r: {"test_error": "≈ 0 (\"almost perfectly\", no number)"} for r in ROWS},
    notes=(
        "The classes overlap (different spreads), so the Bayes error is above 0; the paper's "
        "data parameters are not stated. Figures: per-unit derivative / activation of each "
        "noisy layer at the end of training, evaluated with fresh noise on a grid of inputs."
    ),
)
