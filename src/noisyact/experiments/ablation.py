r"""What makes noisy units work: the parts of Eq. 12 switched off one at a time, and a (c, α) grid.

The paper tunes c and α per experiment and never separates the parts of its activation

.. math::

    \phi(x, \xi) = \alpha h(x) + (1 - \alpha) u(x) + d(x)\,\sigma(x)\,\epsilon   \quad (Eq. 12)

with ∆ = h − u (Eq. 8), σ(x) = c (g(p∆) − 0.5)² with a learned p (Eq. 9), d(x) = −sgn(x) sgn(1 − α)
(§4.2; ``noisyact.functional.noise_direction``, sgn(0) = 1) and ε = ξ (NAN) or |ξ| (NAH). Each row
below changes one part inside a :class:`noisyact.NoisyLSTM` (gates α = 1.1, tanh units α = 1.15,
c = 0.5 unless a grid row says otherwise):

==============  ===================================================================================
row             unit (training; eval is the expectation over ξ, Eq. 13 analogue)
==============  ===================================================================================
NAN, NAH        the library's units (fused path)
hard            hard-sigmoid/hard-tanh, no noise, α = 1 (does noise matter at all?)
alpha-only      NAN with c = 0: αh(x) + (1 − α)u(x) without noise (the unit NAN evaluates with);
                its slope 1 − α ≠ 0 in saturation gives the gradient that hard lacks there
p-fixed         NAN with p frozen at its U(−1, 1) init (library units, ``requires_grad=False``)
p-one           NAN with p = 1 frozen
sigma-const     NAN with σ(x) of Eq. 9 replaced by one σ̄ for every saturated element of the unit:
                σ̄ = the mean of Eq. 9's σ over the unit's saturated elements of the same call
                (detached), so the noise has NAN's mean size but no shape and no σ'(x)ξ gradient
                (Eq. 10); p receives no gradient and stays at its init
d-random        NAH with d(x) a random sign per element: ±|ξ| is N(0, 1), so this unit is NAN in
                distribution; it tests the direction (and half-normal vs normal) of NAH
d-outward       NAH with d(x) negated: the half-normal noise points away from the linear regime
NANI, NANIL     the library's input-noise variants (Eq. 14; NANI σ = 0.05, NANIL c = 0.5)
NANIL-authors   NANIL with the authors' σ = c softplus(p|∆| / (|ξ| + 1e-10)), c = 0.25 as
                in their code (the library's ``NANIL-authors`` variant)
dropout-noise   h(x)·(1 + s ξ), eval h(x): multiplicative Gaussian-dropout noise on the hard unit,
                with s = σ̄ as in sigma-const, so that where |h| = 1 the noise std equals NAN's
                mean σ over the saturated elements (no α, no u term, noise also where linear)
c{c}-a{α}       NAN with gate and unit c = c and α = α (the sensitivity grid)
==============  ===================================================================================

"Same mean size" for sigma-const and dropout-noise: at init no unit saturates (the pre-activations
of a fresh LSTM are well inside |x| < 1), so Eq. 9's σ averaged over an initial model is 0 and a
size fixed from the init cannot be matched. Measured in a NAN model of the quick preset, the
mean σ over saturated elements differs by two orders of magnitude between unit kinds (gates
~5e-4, candidates ~2e-3, cell outputs ~5e-2 after 300–1500 updates), so one fixed constant
would not match either. σ̄ is therefore the matched mean recomputed at every call.

The ablated units are plain ``nn.Module`` s (not subclasses of the library's noisy modules), so a
layer holding one runs the reference per-step loop through its modules.

Tasks: ``task=unique-count`` (§6.6a, data and model of :mod:`.unique_count`) or ``task=ptb``
(§6.3, :mod:`.ptb`'s task and language model; its settings are a :class:`~.ptb.PTBConfig`, the
``ptb_*`` keys). The final metric ``test_score`` is the test error % (unique-count) or the test
perplexity (ptb). Each row is a :class:`Row` of ``ROWS``: what it changes in the units.

Length: the ablated units (one small module per switched-off part), the rows and the grid, the
settings and the figures of the study live together so that one file shows the whole study
(~560 lines).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..rnn import NoisyLSTM
from ..saturating import HARD_SIGMOID, HARD_TANH
from ..training.report import collect
from .ablation_figures import Cells, grid_figures
from .ablation_units import AblatedOutputNoise, DropoutNoise
from .base import Claim, ClassificationTask, Experiment, Task, batch_generator, uniform_init_
from .config import StepsConfig
from .ptb import EXPERIMENT as PTB_EXPERIMENT
from .ptb import PRESETS as PTB_PRESETS
from .ptb import LanguageModel, PTBConfig, PTBTask
from .unique_count import QUICK as UC_QUICK
from .unique_count import UniqueCountModel, make_batch

# --- rows ----------------------------------------------------------------------------------------

GATE_ALPHA, UNIT_ALPHA, C = 1.1, 1.15, 0.5  # the library's defaults (authors' code)
ABLATION_ROWS = ("NAN", "NAH", "hard", "alpha-only", "p-fixed", "p-one", "sigma-const",
                 "d-random", "d-outward", "NANI", "NANIL", "NANIL-authors", "dropout-noise")
GRID_C = (0.05, 0.15, 0.5, 1.0, 2.0, 5.0, 30.0)
GRID_ALPHA = (1.0, 1.05, 1.1, 1.15, 1.3, 1.5)
COARSE_C = (0.05, 0.5, 5.0)
COARSE_ALPHA = (1.0, 1.15, 1.5)
_GRID_RE = re.compile(r"^c([0-9.e+-]+)-a([0-9.e+-]+)$")


def grid_row(c: float, alpha: float) -> str:
    """The row name of a grid cell, e.g. ``c0.5-a1.15``."""
    return f"c{c:g}-a{alpha:g}"


def parse_grid_row(row: str) -> tuple[float, float] | None:
    """(c, α) of a grid row, None for any other row."""
    m = _GRID_RE.match(row)
    return None if m is None else (float(m.group(1)), float(m.group(2)))


GRID_ROWS = tuple(grid_row(c, a) for c in GRID_C for a in GRID_ALPHA)
COARSE_ROWS = tuple(grid_row(c, a) for c in COARSE_C for a in COARSE_ALPHA)


@dataclass(frozen=True)
class Row:
    """What a row changes in the units of its NoisyLSTM (the module docstring's table)."""

    variant: str = "NAN"  # the library variant the layer is built with
    c: float | None = C  # c of gates and units; None: the variant's library default
    alpha: tuple[float, float] | None = (GATE_ALPHA, UNIT_ALPHA)  # α of (gates, units); None: default
    p: str = "learned"  # the noise parameters p: "learned", "fixed" (frozen init) or "one" (= 1)
    unit: str = "library"  # the units: "library", "ablated" (AblatedOutputNoise) or "dropout"
    sigma: str = "eq9"  # ablated units: σ(x) of Eq. 9 or "const" (σ̄)
    direction: str = "inward"  # ablated units: d(x) "inward" (§4.2), "random" or "outward"
    half_normal: bool = False  # ablated units: ε = |ξ| (else ξ)


_LIBRARY = {"c": None, "alpha": None}  # the library's units with their default α and c
ROWS: dict[str, Row] = {
    "NAN": Row(),
    "NAH": Row("NAH"),
    "hard": Row("hard", **_LIBRARY),
    "alpha-only": Row(c=0.0),
    "p-fixed": Row(p="fixed"),
    "p-one": Row(p="one"),
    "sigma-const": Row(unit="ablated", sigma="const"),
    "d-random": Row(unit="ablated", direction="random", half_normal=True),
    "d-outward": Row(unit="ablated", direction="outward", half_normal=True),
    "NANI": Row("NANI", **_LIBRARY),
    "NANIL": Row("NANIL", **_LIBRARY),
    "NANIL-authors": Row("NANIL-authors", **_LIBRARY),
    "dropout-noise": Row(unit="dropout"),
    **{grid_row(c, a): Row(c=c, alpha=(a, a)) for c in GRID_C for a in GRID_ALPHA},
}  # in the order ABLATION_ROWS + GRID_ROWS


def _units(row: Row, H: int) -> dict[str, nn.Module] | None:
    """The ablated units (gate, cand, cell) of a row, or None when the row keeps the library's."""
    if row.unit == "library":
        return None
    assert row.c is not None and row.alpha is not None
    gate_alpha, unit_alpha = row.alpha
    names = ("gate", "cand", "cell")
    specs = ((HARD_SIGMOID, 3 * H, gate_alpha), (HARD_TANH, H, unit_alpha),
             (HARD_TANH, H, unit_alpha))
    if row.unit == "dropout":
        return {n: DropoutNoise(fn, k, c=row.c) for n, (fn, k, _) in zip(names, specs, strict=True)}
    return {n: AblatedOutputNoise(fn, k, alpha=a, c=row.c, sigma=row.sigma,
                                  direction=row.direction, half_normal=row.half_normal)
            for n, (fn, k, a) in zip(names, specs, strict=True)}


def build_rnn(row: str, input_size: int, hidden: int, *, num_layers: int = 1,
              dropout: float = 0.0, batch_first: bool = False) -> NoisyLSTM:
    """A :class:`noisyact.NoisyLSTM` whose units are those of ``row`` (see the module docstring).

    Library rows keep the library's units (and its fused path); the ablated rows replace
    ``noise_l{k}.gate`` (all gates side by side, p of shape (3H,)), ``.cand`` and ``.cell`` of
    every layer by the modules above, which makes the layer run its per-step reference loop.
    """
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}")
    spec = ROWS[row]
    kw: dict[str, Any] = {"num_layers": num_layers, "dropout": dropout, "batch_first": batch_first}
    if spec.alpha is not None:
        kw["gate_alpha"], kw["unit_alpha"] = spec.alpha
    if spec.c is not None:
        kw["gate_c"] = kw["unit_c"] = spec.c
    rnn = NoisyLSTM(input_size, hidden, variant=spec.variant, **kw)
    for layer in range(num_layers):
        acts = getattr(rnn, f"noise_l{layer}")
        if spec.p != "learned":
            for name in ("gate", "cand", "cell"):
                p = getattr(acts, name).p
                if spec.p == "one":
                    with torch.no_grad():
                        p.fill_(1.0)
                p.requires_grad_(False)
        units = _units(spec, hidden)
        if units is not None:
            for name, module in units.items():
                setattr(acts, name, module)
    return rnn


# --- tasks ---------------------------------------------------------------------------------------

PLATEAU_ERROR = 50.0  # % validation error; predicting the majority class (10) gives 55.7 %


def plateau_update(history: list[dict[str, Any]], threshold: float = PLATEAU_ERROR) -> int | None:
    """The first update whose validation error is below ``threshold`` %, None if none is."""
    for rec in history:
        v = rec.get("valid_error")
        if v is not None and v < threshold:
            return int(rec["step"])
    return None


class UniqueCountAblationTask(ClassificationTask):
    """§6.6a's task (:mod:`.unique_count`'s data and model) with the row's LSTM units."""

    def __init__(self, row: str, cfg: AblationConfig, seed: int) -> None:
        self.row, self.cfg, self.seed = row, cfg, seed
        self.eval_sets = {  # the same fixed sets as the unique-count experiment
            split: make_batch(size, cfg.length, cfg.vocab,
                              torch.Generator().manual_seed(10_000 + i))
            for i, (split, size) in enumerate((("valid", cfg.valid_size),
                                               ("test", cfg.test_size)))
        }

    def build_model(self) -> nn.Module:
        c = self.cfg
        rnn = build_rnn(self.row, c.vocab, c.hidden, batch_first=True)
        return UniqueCountModel(c.vocab, c.hidden, c.mlp, rnn)

    def batch(self, step: int, rank: int, world_size: int) -> tuple[Tensor, Tensor]:
        gen = batch_generator(self.seed, step, rank)
        return make_batch(self.cfg.batch_size, self.cfg.length, self.cfg.vocab, gen)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        metrics = super().evaluate(model, split)
        return {**metrics, "score": metrics["error"]}

    def summarize(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Updates to leave the plateau (first validation error < 50 %) and whether it did."""
        step = plateau_update(history)
        return {"plateau_update": step, "left_plateau": 0.0 if step is None else 1.0}


class PTBAblationTask(PTBTask):
    """§6.3's task and language model (:mod:`.ptb`) with the row's LSTM units."""

    def build_model(self) -> nn.Module:
        c = self.cfg
        model = LanguageModel(len(self.vocab), c, {"variant": "hard"})
        drop = c.dropout if c.layers > 1 else 0.0
        model.rnn = build_rnn(self.row, c.emb, c.hidden, num_layers=c.layers, dropout=drop)
        uniform_init_(model.rnn, c.init)  # Zaremba's U(±init) as in LanguageModel; p keep U(±1)
        return model

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        metrics = super().evaluate(model, split)
        return {**metrics, "score": metrics["ppl"]}


TASKS = ("unique-count", "ptb")
_PTB_QUICK = PTB_PRESETS["quick"].without_monitor()


def make_ablation_task(row: str, cfg: AblationConfig, seed: int) -> Task:
    """The task of ``cfg.task`` for one (row, seed)."""
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}")
    if cfg.task == "ptb":
        return PTBAblationTask(row, cfg.ptb, seed)
    return UniqueCountAblationTask(row, cfg, seed)


# --- settings and presets ------------------------------------------------------------------------

@dataclass(frozen=True)
class AblationConfig(StepsConfig):
    """Settings of the ablation (defaults: the quick preset, unique-count's quick budget).
    ``task=ptb`` trains §6.3's language model instead, with the settings of ``ptb``."""

    rows: tuple[str, ...] = ABLATION_ROWS
    seeds: int = 3
    batch_size: int = UC_QUICK.batch_size
    optimizer: str = UC_QUICK.optimizer
    lr: float = UC_QUICK.lr
    clip: float = UC_QUICK.clip
    log_every: int = UC_QUICK.log_every
    steps: int = UC_QUICK.steps
    eval_every: int = UC_QUICK.eval_every
    ckpt_every: int = UC_QUICK.ckpt_every
    task: str = "unique-count"  # the task: "unique-count" (§6.6a) or "ptb" (§6.3)
    length: int = UC_QUICK.length  # unique-count: integers per sequence
    vocab: int = UC_QUICK.vocab  # unique-count: the integers are 0 … vocab − 1
    hidden: int = UC_QUICK.hidden  # unique-count: LSTM units
    mlp: int = UC_QUICK.mlp  # unique-count: units of the ReLU layer after the pooling
    valid_size: int = UC_QUICK.valid_size  # unique-count: validation sequences
    test_size: int = UC_QUICK.test_size  # unique-count: test sequences
    ptb: PTBConfig = _PTB_QUICK  # task=ptb: its settings (``ptb_<setting>``)


QUICK = AblationConfig()  # the ablation rows at the unique-count quick budget, 3 seeds

PRESETS = {
    # seconds: every ablation row and two grid cells (so that the figures are drawn)
    "smoke": replace(QUICK, hidden=8, mlp=8, steps=20, eval_every=10, ckpt_every=10,
                     valid_size=200, test_size=200, ptb=PTB_PRESETS["smoke"].without_monitor(), seeds=1,
                     rows=(*ABLATION_ROWS, grid_row(0.5, 1.15), grid_row(5.0, 1.0))),
    "quick": QUICK,
    # the sensitivity grid: 7 c × 6 α × 3 seeds of NAN at the quick budget
    "grid": replace(QUICK, rows=GRID_ROWS),
    # a 3 × 3 grid (for task=ptb, or a first look)
    "grid-coarse": replace(QUICK, rows=COARSE_ROWS),
}


# --- experiment ----------------------------------------------------------------------------------

class Ablation(Experiment):
    """Dispatches the loop settings on ``task`` and draws the grid's figures."""

    def make_task(self, row: str, cfg: AblationConfig, seed: int) -> Any:
        return make_ablation_task(row, cfg, seed)

    def train_config(self, cfg: AblationConfig, seed: int, **loop: Any):  # type: ignore[no-untyped-def]
        if cfg.task == "ptb":  # steps come from the data, as in the ptb experiment
            return PTB_EXPERIMENT.train_config(cfg.ptb, seed, **loop)
        return super().train_config(cfg, seed, **loop)

    def figures(self, out_dir: Path, cfg: AblationConfig) -> list[str]:
        return grid_figures(out_dir, _cells(Path(out_dir), list(cfg.rows)), cfg.task)


def _cells(out_dir: Path, rows: list[str]) -> Cells:
    cells = {}
    for rr in collect(out_dir, [r for r in rows if r in GRID_ROWS]):
        row = ROWS[rr.row]
        assert row.c is not None and row.alpha is not None
        cells[(row.c, row.alpha[0])] = {"score": rr.values("test_score"),
                                        "left": rr.values("left_plateau")}
    return cells


def _claims() -> tuple[Claim, ...]:
    m, lab = "test_score", "test error % (unique-count) or ppl (ptb)"
    plateau = "updates to leave the plateau"
    return (
        # the headline: the noise itself, against the same unit without it (α's slope kept)
        Claim("NAN", "alpha-only", m, lab),
        Claim("NAN", "alpha-only", "plateau_update", plateau, missing_as="steps"),
        Claim("NAN", "p-fixed", m, lab), Claim("NAN", "p-one", m, lab),
        Claim("NAN", "sigma-const", m, lab), Claim("NAH", "d-random", m, lab),
        Claim("NAH", "d-outward", m, lab), Claim("NAN", "dropout-noise", m, lab),
        Claim("NAN", "NANIL", m, lab), Claim("NAN", "NANI", m, lab),
        Claim("NAN", "NANIL-authors", m, lab), Claim("NANIL-authors", "NANIL", m, lab),
        Claim("NAN", "hard", m, lab),
        Claim("NAN", "hard", "plateau_update", plateau, missing_as="steps"))


EXPERIMENT = Ablation(
    name="ablation",
    paper_table="§4–§5 parts and sensitivity",  # the heading in docs/results.md
    headline="ablation-quick",
    claims=_claims(),
    description=(
        "Which part of Eq. 12 matters: rows switch off one part of the NAN/NAH units of a "
        "NoisyLSTM at a time (learned p, the shape of σ(x), the direction d(x), half-normal vs "
        "normal, input noise, plain multiplicative noise); grid rows c{c}-a{α} vary c and α of "
        "NAN. Each claim reads 'the part matters' (the full unit beats the ablated one). "
        "test score = test error % (unique-count) or test perplexity (ptb), mean ± std over "
        "seeds."
    ),
    presets=PRESETS,
    rows=tuple(ROWS),
    columns=[("test_score", "test score"),
             ("plateau_update", "updates to leave the plateau (seeds that left)"),
             ("left_plateau", "fraction of seeds that left the plateau")],
    curve=("valid_score", "validation error % or perplexity"),
    notes=(
        "Plateau: the first evaluation (every eval_every updates) with validation error < 50 % "
        "(always predicting 10 distinct values gives 55.7 %). d-random is NAN in distribution "
        "(±|ξ| is N(0, 1)), so NAH < d-random is the same question as NAH < NAN. At α = 1 "
        "d(x) = −sgn(x)·sgn(0) = −sgn(x) with the library's sgn(0) = 1: the noise of NAH points "
        "inward (with sgn(0) = 0, as in Theano, it would vanish)."
    ),
)
