"""What the two attention experiments share: vocabulary, units by row, decoding, BLEU, plots.

Decoders expose ``start(source) -> state`` and ``step(prev_tokens, state) -> (log_probs, state,
attention)``, where every tensor of ``state`` has the hypotheses on dim 0; :func:`greedy` and
:func:`beam_search` only use that interface. Token 0 is end-of-sentence (and the "previous
token" of the first step, which the models embed as zeros), 1 is UNK, as in dl4mt and
arctic-captions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..modules import HardSigmoid, NoisyHardSigmoid, NoisyHardTanh

EOS, UNK = 0, 1
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)

State = tuple[Tensor, ...]
StepFn = Callable[[Tensor, State], tuple[Tensor, State, Tensor]]


def tokenize(line: str) -> list[str]:
    """Lower-cased words and punctuation marks (``"l'homme."`` → ``l ' homme .``)."""
    return _TOKEN.findall(line.lower())


class Vocab:
    """eos = 0, UNK = 1, then words by descending frequency (ties alphabetical), capped."""

    def __init__(self, words: Sequence[str]) -> None:
        self.itos = ["<eos>", "<unk>", *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], max_size: int,
              min_freq: int = 1) -> Vocab:
        counts = Counter(w for s in sentences for w in s)
        ranked = sorted((w for w, n in counts.items() if n >= min_freq),
                        key=lambda w: (-counts[w], w))
        return cls(ranked[: max(0, max_size - 2)])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(w, UNK) for w in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        out = []
        for i in ids:
            if i == EOS:
                break
            out.append(self.itos[i])
        return out


def pad(seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """(T, B) ids with an eos after each sequence (scored, as dl4mt does) and its mask."""
    T = max(len(s) for s in seqs) + 1
    ids = torch.zeros(T, len(seqs), dtype=torch.long)
    mask = torch.zeros(T, len(seqs))
    for b, s in enumerate(seqs):
        ids[: len(s), b] = torch.tensor(s, dtype=torch.long)
        mask[: len(s) + 1, b] = 1
    return ids, mask


def _windows(n: int, batch_size: int) -> list[tuple[int, int]]:
    """dl4mt's sorting windows of batch × 20 examples over n shuffled examples, as (lo, hi)."""
    size = batch_size * 20
    return [(lo, min(lo + size, n)) for lo in range(0, n - batch_size + 1, size)]


def length_sorted_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """dl4mt's iterator order: shuffle, sort windows of batch × 20 by length, cut into batches
    (each of similar lengths), shuffle the batches."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    batches = []
    for lo, hi in _windows(len(order), batch_size):
        window = sorted(order[lo:hi], key=lambda i: lengths[i])
        batches += [window[k: k + batch_size] for k in range(0, len(window) - batch_size + 1,
                                                             batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


class EpochBatches:
    """The batches of each epoch (re-shuffled per epoch and seed), one epoch cached."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        if len(lengths) < batch_size:
            raise ValueError(f"{len(lengths)} training examples are fewer than batch_size="
                             f"{batch_size}")
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.per_epoch = sum((hi - lo) // batch_size
                             for lo, hi in _windows(len(self.lengths), batch_size))
        self._cache: tuple[int, list[list[int]]] | None = None

    def __call__(self, step: int) -> list[int]:
        epoch = step // self.per_epoch
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, length_sorted_batches(self.lengths, self.batch_size,
                                                        self.seed * 1_000_003 + epoch))
        return self._cache[1][step % self.per_epoch]


class EarlyStopping:
    """A task mixin: early stopping on the validation NLL, as every model of Tables 3 and 4.

    After each validation (the trainer's :meth:`~noisyact.training.Task.on_evaluate`), a lower
    NLL than before replaces the kept model state (a CPU copy of the state dict, held in memory
    and saved in the checkpoint through :meth:`state_dict`, so a resumed run keeps the same best
    model). After the last update's validation the kept model is evaluated on the test split;
    :meth:`summarize` then reports ``best_valid_nll``, ``best_step`` and ``best_test_<metric>``
    beside the trainer's ``test_<metric>`` of the last model.
    """

    cfg: Any  # the experiment's config: ``cfg.steps`` updates
    best_state: dict[str, Tensor] | None = None
    best_valid_nll: float | None = None
    best_step: int | None = None
    best_test: dict[str, float] | None = None

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        raise NotImplementedError

    def on_evaluate(self, model: nn.Module, step: int, metrics: dict[str, float]) -> None:
        nll = metrics.get("nll")
        if (nll is not None and math.isfinite(nll)
                and (self.best_valid_nll is None or nll < self.best_valid_nll)):
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in model.state_dict().items()}
            self.best_valid_nll, self.best_step = float(nll), step
        if step >= self.cfg.steps and self.best_state is not None:
            live = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(self.best_state)
            try:
                self.best_test = self.evaluate(model, "test")
            finally:
                model.load_state_dict(live)

    def summarize(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"best_valid_nll": self.best_valid_nll,
                               "best_step": self.best_step}
        out.update({f"best_test_{k}": v for k, v in (self.best_test or {}).items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"best_state": self.best_state, "best_valid_nll": self.best_valid_nll,
                "best_step": self.best_step, "best_test": self.best_test}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_state = state["best_state"]
        self.best_valid_nll, self.best_step = state["best_valid_nll"], state["best_step"]
        self.best_test = state["best_test"]


def tanh_unit(kind: str, features: int, c: float | None = None) -> nn.Module:
    """A tanh unit of a row's kind: tanh (``soft``), hard-tanh (``hard``) or a noisy hard-tanh
    of that variant."""
    if kind == "soft":
        return nn.Tanh()
    if kind == "hard":
        return nn.Hardtanh()
    return NoisyHardTanh(kind, c=c, num_parameters=features, dim=-1)


def sigmoid_unit(kind: str, features: int, c: float | None = None) -> nn.Module:
    """A sigmoid unit of a row's kind: sigmoid, hard-sigmoid or a noisy hard-sigmoid."""
    if kind == "soft":
        return nn.Sigmoid()
    if kind == "hard":
        return HardSigmoid()
    return NoisyHardSigmoid(kind, c=c, num_parameters=features, dim=-1)


def orthogonal_(w: Tensor, scale: float = 1.0) -> Tensor:
    """Each square block of ``w`` (k·n × n, stacked gates) an orthogonal matrix × ``scale``."""
    n = w.shape[1]
    with torch.no_grad():
        for lo in range(0, w.shape[0], n):
            block = torch.empty(n, n)
            nn.init.orthogonal_(block)
            w[lo: lo + n].copy_(block * scale)
    return w


def masked_attention(scores: Tensor, mask: Tensor) -> Tensor:
    """softmax over dim 0 of (L, B) scores where ``mask`` is 1 (a masked log-softmax: no
    overflow, unlike dl4mt's exp·mask)."""
    scores = scores.masked_fill(mask == 0, float("-inf"))
    return torch.softmax(scores, dim=0)


def _select(state: State, index: Tensor) -> State:
    return tuple(s.index_select(0, index) for s in state)


@torch.no_grad()
def greedy(step: StepFn, state: State, batch: int, max_len: int) -> tuple[list[list[int]],
                                                                          list[Tensor]]:
    """Arg-max decoding of ``batch`` sequences; returns ids (eos excluded) and attentions."""
    prev = torch.zeros(batch, dtype=torch.long, device=state[0].device)
    out = torch.zeros(max_len, batch, dtype=torch.long)
    alphas = []
    done = torch.zeros(batch, dtype=torch.bool)
    for t in range(max_len):
        logp, state, alpha = step(prev, state)
        prev = logp.argmax(-1)
        out[t] = prev.cpu()
        alphas.append(alpha.cpu())
        done |= out[t] == EOS
        if done.all():
            break
    seqs = [[int(i) for i in out[:, b]] for b in range(batch)]
    seqs = [s[: s.index(EOS)] if EOS in s else s for s in seqs]
    return seqs, alphas


@torch.no_grad()
def beam_search(step: StepFn, state: State, k: int, max_len: int,
                normalize: bool = False) -> list[int]:
    """dl4mt's ``gen_sample`` for one sequence: keep the k best live hypotheses by summed
    −log p; a hypothesis that emits eos is finished; stop when k are finished or none is live;
    unfinished ones join at the end. Returns the best (optionally length-normalised) ids."""
    if k < 1:
        raise ValueError(f"beam size must be >= 1, got {k}")
    live: list[list[int]] = [[]]
    scores = torch.zeros(1)
    finished: list[tuple[float, list[int]]] = []
    prev = torch.zeros(1, dtype=torch.long, device=state[0].device)
    for _ in range(max_len):
        logp, state, _ = step(prev, state)
        cand = (scores.unsqueeze(1) - logp.float().cpu()).flatten()
        V = logp.shape[-1]
        best = torch.topk(cand, min(k - len(finished), cand.numel()), largest=False).indices
        keep, new_live, new_scores = [], [], []
        for idx in best.tolist():
            h, w = divmod(idx, V)
            if w == EOS:
                finished.append((float(cand[idx]), live[h]))
            else:
                keep.append(h)
                new_live.append([*live[h], w])
                new_scores.append(float(cand[idx]))
        if len(finished) >= k or not new_live:
            live, scores = [], torch.zeros(0)
            break
        live, scores = new_live, torch.tensor(new_scores)
        index = torch.tensor(keep, device=state[0].device)
        state = _select(state, index)
        prev = torch.tensor([h[-1] for h in live], device=state[0].device)
    finished += [(float(s), h) for s, h in zip(scores.tolist(), live, strict=True)]
    if normalize:
        return min(finished, key=lambda f: f[0] / (len(f[1]) + 1))[1]
    return min(finished, key=lambda f: f[0])[1]


def bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
         max_order: int = 4) -> float:
    """Corpus BLEU-``max_order`` (sacrebleu, 13a tokenisation of the space-joined tokens),
    with any number of references per hypothesis (shorter lists are padded as sacrebleu
    expects)."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise ImportError("BLEU needs sacrebleu: pip install 'noisyact[mt]'") from None
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    n_refs = max(len(r) for r in references)
    streams = [[" ".join(r[i]) if i < len(r) else None for r in references]
               for i in range(n_refs)]
    # our hypotheses and references are already tokenised: force skips sacrebleu's warning
    metric = BLEU(max_ngram_order=max_order, tokenize="13a", force=True)
    return float(metric.corpus_score([" ".join(h) for h in hypotheses], streams).score)


def plot_attention(path: Path, panels: Sequence[tuple[str, Tensor, Sequence[str],
                                                       Sequence[str]]]) -> Path:
    """Heat maps of attention weights (output words × input positions), one per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (title, alpha, xs, ys) in zip(axes[0], panels, strict=True):
        ax.imshow(alpha.numpy(), cmap="gray_r", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(len(xs)), xs, rotation=90, fontsize=7)
        ax.set_yticks(range(len(ys)), ys, fontsize=7)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_model_of(run_dir: Path, build: Callable[[], nn.Module]) -> nn.Module | None:
    """The model saved in ``run_dir/checkpoint.pt`` (None when absent), in eval mode."""
    from ..training import load_checkpoint

    ck = run_dir / "checkpoint.pt"
    if not ck.exists():
        return None
    model = build()
    model.load_state_dict(load_checkpoint(ck)["model"])
    return model.eval()


__all__ = [
    "EOS",
    "UNK",
    "EarlyStopping",
    "EpochBatches",
    "Vocab",
    "beam_search",
    "bleu",
    "greedy",
    "length_sorted_batches",
    "load_model_of",
    "masked_attention",
    "orthogonal_",
    "pad",
    "plot_attention",
    "sigmoid_unit",
    "tanh_unit",
    "tokenize",
]
