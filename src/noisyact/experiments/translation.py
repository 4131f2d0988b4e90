"""§6.4: attention-based machine translation, English → French (Table 4).

The dl4mt model (Bahdanau et al. 2014; ``TASKS.md`` §4): a bidirectional GRU encoder, the
conditional GRU decoder ``gru_cond`` (REC1 on the previous word, attention
e_ij = vᵀ tanh(W h_i + U s'), REC2 on the context), s_0 = tanh(W_init · mean_i h_i), a deep output
t_j = tanh(L_s s_j + L_y E y_{j−1} + L_c c_j) and a softmax. Every sigmoid and tanh, in the GRUs
and outside them, is a unit of the row: ``reference`` (sigmoid/tanh), ``hard`` (hard versions,
no noise; the middle row of Table 4), ``NAH``. Initialisation as dl4mt's ``norm_weight``:
orthogonal square matrices (the recurrent U's, W_a and, with ``rec2_ortho``, REC2's
context-to-gate W_c, 2D × 2D), scaled by ``ortho_scale`` (0.01: "we scaled down the orthogonal
weight matrices by multiplying with 0.01", §6.4), the others ``init_std``·N(0, 1) (0.01 in dl4mt
and the paper preset; 0.1 in quick, see there), biases 0. The paper describes the 0.01 scaling
with its noisy models and does not say whether its reference run had it; every row here gets
the same initialisation (ortho_scale applies to all rows), so that the rows differ only in
their units. Runs before ``rec2_ortho`` existed drew W_c from init_std·N (their config.json
lacks the setting, so they cannot be resumed with this code by mistake).

Cost: per sentence Σ_j −log p(y_j) with eos scored, batch mean; validation NLL is that sum
averaged over sentences (Table 4's "Valid nll"). BLEU: sacrebleu on the lower-cased tokens
(13a), greedy and beam search (k = ``beam``, dl4mt's ``gen_sample``).

Data: ``quick`` and ``smoke`` read Multi30k En–Fr (``train``, ``val``, ``test_2016_flickr``
``.en``/``.fr``, plain or ``.gz``) from ``data_dir`` (default: ``$NOISYACT_MULTI30K`` or
``../shared/data/multi30k``); ``paper`` reads Europarl v7 (``europarl-v7.fr-en.en/.fr``) and
newstest2011 (``newstest2011.en/.fr``, used for validation and, as in the paper, for the reported
BLEU) from ``data_dir``. Nothing is downloaded.

Length: the corpus reader, the settings, the model and the task stay in one module like every
experiment's (~410 lines).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..rnn import NoisyGRU, NoisyGRUCell
from . import seq2seq as s2s
from .base import Claim, Experiment, Task, model_device, rank_slice, weights
from .config import StepsConfig
from .textfiles import read_lines

# row -> the kind of its units: "soft" (sigmoid/tanh), "hard" (no noise) or a noisy variant
ROWS = {"reference": "soft", "hard": "hard", "NAH": "NAH"}
CORPORA = {
    "multi30k": {"train": "train", "valid": "val", "test": "test_2016_flickr"},
    "europarl": {"train": "europarl-v7.fr-en", "valid": "newstest2011", "test": "newstest2011"},
}


@dataclass(frozen=True)
class TranslationConfig(StepsConfig):
    """Settings of the translation experiment (defaults: the quick preset, Multi30k)."""

    rows: tuple[str, ...] = tuple(ROWS)
    clip: float = 1.0
    log_every: int = 25
    steps: int = 2000
    eval_every: int = 500
    ckpt_every: int = 250
    corpus: str = "multi30k"  # "multi30k" or "europarl" (CORPORA)
    data_dir: str = ""  # the corpus folder; "": $NOISYACT_MULTI30K or ../shared/data/multi30k
    src: str = "en"  # source language (file suffix)
    tgt: str = "fr"  # target language (file suffix)
    vocab: int = 4000  # words per language, eos and UNK included
    min_freq: int = 3  # training occurrences a word needs to be in the vocabulary
    maxlen: int = 50  # training pairs with a side this long or longer are left out
    dim_word: int = 128  # word embedding size
    dim: int = 256  # GRU units (the encoder's per direction)
    ortho_scale: float = 0.01  # scale of the orthogonal square matrices
    rec2_ortho: bool = True  # REC2's context-to-gate matrix W_c orthogonal too (as dl4mt)
    init_std: float = 0.1  # std of the other matrices (dl4mt: 0.01)
    dropout: float = 0.0  # dropout before the readout
    beam: int = 5  # beam size of the test BLEU (1: greedy only)
    valid_bleu_size: int = 300  # validation sentences decoded for the validation BLEU
    eval_size: int = 500  # validation/test sentences; 0: all
    max_out: int = 80  # longest decoded sentence
    train_limit: int = 0  # the first training lines read; 0: all


# ~2 epochs of Multi30k with a small model: minutes per row here. dl4mt's 0.01·N for the
# non-square matrices keeps Adam on the unigram plateau for far longer than this budget
# (measured), so quick starts those at 0.1·N; the recurrent matrices keep the paper's
# orthogonal × 0.01
QUICK = TranslationConfig()

PRESETS = {
    "smoke": replace(QUICK, vocab=300, min_freq=2, init_std=0.01, dim_word=16, dim=24,
                     batch_size=8, train_limit=400, eval_size=40, valid_bleu_size=20, beam=2,
                     steps=12, eval_every=6, ckpt_every=6, log_every=3, max_out=20),
    "quick": QUICK,
    # quick's model for 3× its updates (≈ 6.6 epochs of Multi30k) and 3 seeds, validated
    # every 500 updates for early stopping. ≈ 4.4 (reference) and 3.2 (NAH) updates/s on one
    # CPU thread: ≈ 25-35 min per run plus evaluations, ≈ 3 h for the 9 runs with --jobs 2
    "long": replace(QUICK, steps=6000, seeds=3),
    # dl4mt's train() defaults (dim_word 100, dim 1000, Graves RMSProp 1e-4, batch 16,
    # maxlen 100, no clipping) on Europarl; run it on a GPU
    "paper": replace(QUICK, corpus="europarl", vocab=30000, min_freq=1, maxlen=100,
                     dim_word=100, dim=1000, init_std=0.01, batch_size=16,
                     optimizer="rmsprop-graves", lr=1e-4, clip=0.0, steps=300_000,
                     eval_every=5000, ckpt_every=1000, eval_size=0, max_out=200,
                     valid_bleu_size=1000),
}


def _default_dir() -> Path | None:
    env = os.environ.get("NOISYACT_MULTI30K")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [Path.cwd() / "../shared/data/multi30k", here.parents[3] / "../shared/data/multi30k"]
    return next((c for c in candidates if c.is_dir()), None)


def _read(folder: Path, stem: str, lang: str, limit: int = 0) -> tuple[list[str], int]:
    """The first ``limit`` lines (0: all) of a corpus file and its number of lines."""
    for name in (f"{stem}.{lang}", f"{stem}.{lang}.gz"):
        f = folder / name
        if f.is_file():
            return read_lines(f, limit=limit, hint="a corpus file holds one UTF-8 sentence a line")
    raise ValueError(f"{folder / f'{stem}.{lang}'} (or .gz) is missing; data_dir must hold the "
                     "corpus files (see `noisyact list` / the translation docstring)")


def load_corpus(cfg: TranslationConfig) -> dict[str, tuple[list[str], list[str]]]:
    """Parallel (source, target) lines of each split, checked to be aligned."""
    if cfg.corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {list(CORPORA)}, got {cfg.corpus!r}")
    folder = Path(cfg.data_dir) if cfg.data_dir else (
        _default_dir() if cfg.corpus == "multi30k" else None)
    if folder is None or not folder.is_dir():
        raise ValueError(
            f"no {cfg.corpus} data: pass data_dir=/path/to/folder (or --data-dir) holding "
            + ", ".join(f"{s}.{cfg.src}/.{cfg.tgt}" for s in CORPORA[cfg.corpus].values())
            + (" (Multi30k: github.com/multi30k/dataset, data/task1/raw)"
               if cfg.corpus == "multi30k" else ""))
    out = {}
    for split, stem in CORPORA[cfg.corpus].items():
        # only the lines a run uses are kept (train_limit, eval_size): smoke stays small
        limit = cfg.train_limit if split == "train" else cfg.eval_size
        (src, n_src), (tgt, n_tgt) = (_read(folder, stem, cfg.src, limit),
                                      _read(folder, stem, cfg.tgt, limit))
        if n_src != n_tgt:
            raise ValueError(f"{stem}.{cfg.src} has {n_src} lines but {stem}.{cfg.tgt} "
                             f"has {n_tgt}: not a parallel corpus")
        out[split] = (src, tgt)
    return out


class NMT(nn.Module):
    """dl4mt's attention encoder-decoder with the units of one row."""

    def __init__(self, n_src: int, n_tgt: int, cfg: TranslationConfig, kind: str) -> None:
        """``kind``: the units, "soft", "hard" or a noisy variant (:data:`ROWS`' values)."""
        super().__init__()
        W, D = cfg.dim_word, cfg.dim
        self.kind = kind
        self.src_embed = nn.Embedding(n_src, W)
        self.tgt_embed = nn.Embedding(n_tgt, W)
        if kind == "soft":
            self.encoder: nn.Module = nn.GRU(W, D, bidirectional=True)
            self.rec1: nn.Module = nn.GRUCell(W, D)
            self.rec2: nn.Module = nn.GRUCell(2 * D, D)
        else:
            self.encoder = NoisyGRU(W, D, bidirectional=True, variant=kind)
            self.rec1 = NoisyGRUCell(W, D, variant=kind)
            self.rec2 = NoisyGRUCell(2 * D, D, variant=kind)
        self.init_state = nn.Sequential(nn.Linear(2 * D, D), s2s.tanh_unit(kind, D))
        self.att_ctx = nn.Linear(2 * D, 2 * D)  # W_a h_i + b_a, precomputed per sentence
        self.att_state = nn.Linear(D, 2 * D, bias=False)  # U_a s'
        self.att_act = s2s.tanh_unit(kind, 2 * D)
        self.att_v = nn.Linear(2 * D, 1)
        self.out_state = nn.Linear(D, W)
        self.out_prev = nn.Linear(W, W)
        self.out_ctx = nn.Linear(2 * D, W)
        self.out_act = s2s.tanh_unit(kind, W)
        self.drop = nn.Dropout(cfg.dropout)
        self.readout = nn.Linear(W, n_tgt)
        self.rec2_ortho = bool(cfg.rec2_ortho)
        self._init(cfg.ortho_scale, cfg.init_std)

    def _init(self, scale: float, std: float) -> None:
        with torch.no_grad():
            for name, p in weights(self):  # the noise parameters keep U(-1, 1)
                if p.dim() == 1:
                    p.zero_()
                elif "weight_hh" in name or name == "att_ctx.weight":
                    s2s.orthogonal_(p, scale)  # the recurrent U's and W_a: orthogonal blocks
                elif name == "rec2.weight_ih" and self.rec2_ortho:
                    # dl4mt's W_c (context → REC2's [r2; u2], 2D × 2D, square) is orthogonal;
                    # W'_c (context → candidate, D × 2D) 0.01·N like the other non-square ones
                    D = p.shape[0] // 3
                    block = torch.empty(2 * D, 2 * D)
                    nn.init.orthogonal_(block)
                    p[: 2 * D].copy_(block * scale)
                    p[2 * D:].normal_(0, std)
                else:
                    p.normal_(0, std)

    def encode(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        lengths = src_mask.sum(0).long().cpu()
        packed = pack_padded_sequence(self.src_embed(src), lengths, enforce_sorted=False)
        h, _ = self.encoder(packed)
        h, _ = pad_packed_sequence(h, total_length=src.shape[0])
        return h, src_mask

    def start(self, src: Tensor, src_mask: Tensor) -> s2s.State:
        """Decoder state: (s_0, annotations (B, L, 2D), W_a h (B, L, 2D), source mask (B, L))."""
        h, m = self.encode(src, src_mask)
        mean = (h * m.unsqueeze(-1)).sum(0) / m.sum(0).unsqueeze(-1)
        hb = h.transpose(0, 1)
        return self.init_state(mean), hb, self.att_ctx(hb), m.t()

    def step(self, prev: Tensor, state: s2s.State) -> tuple[Tensor, s2s.State, Tensor]:
        """One target word: log-probabilities (B, V), the new state, attention (B, L)."""
        s, h, h_proj, m = state
        emb = self.tgt_embed(prev) * (prev != s2s.EOS).unsqueeze(-1)  # zero before word 1
        s1 = self.rec1(emb, s)
        scores = self.att_v(self.att_act(h_proj + self.att_state(s1).unsqueeze(1))).squeeze(-1)
        alpha = s2s.masked_attention(scores.t(), m.t()).t()
        ctx = torch.einsum("bl,bld->bd", alpha, h)
        s2 = self.rec2(ctx, s1)
        t = self.out_act(self.out_state(s2) + self.out_prev(emb) + self.out_ctx(ctx))
        logits = self.readout(self.drop(t))
        return torch.log_softmax(logits, -1), (s2, h, h_proj, m), alpha

    def forward(self, src: Tensor, src_mask: Tensor, tgt: Tensor, tgt_mask: Tensor) -> Tensor:
        """Per-sentence summed NLL (B,) under teacher forcing."""
        state = self.start(src, src_mask)
        prev = torch.zeros_like(tgt[0])
        nll = torch.zeros(tgt.shape[1], device=tgt.device)
        for j in range(tgt.shape[0]):  # steps past a sentence's end are masked out
            logp, state, _ = self.step(prev, state)
            nll = nll - logp.gather(1, tgt[j].unsqueeze(1)).squeeze(1) * tgt_mask[j]
            prev = tgt[j]
        return nll


class TranslationTask(s2s.EarlyStopping, Task):
    _cache: ClassVar[dict[tuple[Any, ...], Any]] = {}

    def __init__(self, row: str, cfg: TranslationConfig, seed: int) -> None:
        self.row, self.cfg, self.seed = row, cfg, seed
        key = (cfg.corpus, cfg.data_dir, cfg.src, cfg.tgt, cfg.vocab, cfg.min_freq, cfg.maxlen,
               cfg.train_limit)
        if key not in self._cache:
            self._cache[key] = self._prepare()
        self.src_vocab, self.tgt_vocab, self.data, self.refs = self._cache[key]
        self.batches = s2s.EpochBatches([len(p[1]) for p in self.data["train"]],
                                        cfg.batch_size, seed)
        mean_len = sum(len(p[1]) + 1 for p in self.data["train"]) / len(self.data["train"])
        self.tokens_per_step = round(cfg.batch_size * mean_len)  # target words (mean)

    def _prepare(self) -> Any:
        c = self.cfg
        raw = load_corpus(c)
        tok = {split: ([s2s.tokenize(x) for x in src], [s2s.tokenize(y) for y in tgt])
               for split, (src, tgt) in raw.items()}
        if c.train_limit:
            tok["train"] = (tok["train"][0][: c.train_limit], tok["train"][1][: c.train_limit])
        sv = s2s.Vocab.build(tok["train"][0], c.vocab, c.min_freq)
        tv = s2s.Vocab.build(tok["train"][1], c.vocab, c.min_freq)
        data, refs = {}, {}
        for split, (src, tgt) in tok.items():
            pairs = [(sv.encode(x), tv.encode(y)) for x, y in zip(src, tgt, strict=True)]
            keep = [i for i, (x, y) in enumerate(pairs)
                    if split != "train" or (0 < len(x) < c.maxlen and 0 < len(y) < c.maxlen)]
            if split != "train" and c.eval_size:
                keep = keep[: c.eval_size]
            data[split] = [pairs[i] for i in keep if pairs[i][0]]
            refs[split] = [tgt[i] for i in keep if pairs[i][0]]
        if not data["train"]:
            raise ValueError("no training pair is shorter than maxlen")
        return sv, tv, data, refs

    def build_model(self) -> nn.Module:
        return NMT(len(self.src_vocab), len(self.tgt_vocab), self.cfg, ROWS[self.row])

    def batch(self, step: int, rank: int, world_size: int) -> tuple[Tensor, ...]:
        idx = self.batches(step)
        idx = idx[rank_slice(len(idx), rank, world_size)]
        return self._tensors([self.data["train"][i] for i in idx])

    @staticmethod
    def _tensors(pairs: list[tuple[list[int], list[int]]]) -> tuple[Tensor, ...]:
        src, src_mask = s2s.pad([p[0] for p in pairs])
        tgt, tgt_mask = s2s.pad([p[1] for p in pairs])
        return src, src_mask, tgt, tgt_mask

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        dev = model_device(model)
        return model(*(t.to(dev) for t in batch)).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """NLL per sentence; BLEU with greedy decoding (valid: the first valid_bleu_size
        sentences) and, on test, with beam search."""
        model.eval()
        dev = model_device(model)
        pairs = self.data[split]
        nll = 0.0
        for lo in range(0, len(pairs), 64):
            b = self._tensors(pairs[lo: lo + 64])
            nll += float(model(*(t.to(dev) for t in b)).sum())
        out = {"nll": nll / len(pairs)}
        n = len(pairs) if split == "test" else min(len(pairs), self.cfg.valid_bleu_size)
        hyps = self.translate(model, [p[0] for p in pairs[:n]])
        out["bleu"] = s2s.bleu(hyps, [[r] for r in self.refs[split][:n]])
        if split == "test" and self.cfg.beam > 1:
            beam = [self.translate_beam(model, p[0]) for p in pairs[:n]]
            out["bleu_beam"] = s2s.bleu(beam, [[r] for r in self.refs[split][:n]])
        return out

    def translate(self, model: nn.Module, sources: list[list[int]]) -> list[list[str]]:
        dev = model_device(model)
        hyps: list[list[str]] = []
        for lo in range(0, len(sources), 64):
            src, m = s2s.pad(sources[lo: lo + 64])
            state = model.start(src.to(dev), m.to(dev))
            ids, _ = s2s.greedy(model.step, state, src.shape[1], self.cfg.max_out)
            hyps += [self.tgt_vocab.decode(s) for s in ids]
        return hyps

    def translate_beam(self, model: nn.Module, source: list[int]) -> list[str]:
        dev = model_device(model)
        src, m = s2s.pad([source])
        state = model.start(src.to(dev), m.to(dev))
        ids = s2s.beam_search(model.step, state, self.cfg.beam, self.cfg.max_out)
        return self.tgt_vocab.decode(ids)


class Translation(Experiment):
    def figures(self, out_dir: Path, cfg: TranslationConfig) -> list[str]:
        """Attention of each row's seed-0 model on the first three test sentences (a folder
        without checkpoints, such as a committed one, keeps the figures its run drew)."""
        rows = list(cfg.rows or self.rows)
        if not any((out_dir / row / "seed0" / "checkpoint.pt").exists() for row in rows):
            # nothing to draw (no data needed): the figures the run drew, as they are
            return [f"![attention, test sentence {k}](attention{k}.png)" for k in range(3)
                    if (out_dir / f"attention{k}.png").exists()]
        task = TranslationTask(rows[0], cfg, 0)
        lines = []
        for k in range(min(3, len(task.data["test"]))):
            panels = []
            source = task.data["test"][k][0]
            for row in rows:
                t = TranslationTask(row, cfg, 0)
                model = s2s.load_model_of(out_dir / row / "seed0", t.build_model)
                if model is None:
                    continue
                src, m = s2s.pad([source])
                ids, alphas = s2s.greedy(model.step, model.start(src, m), 1, cfg.max_out)
                words = [*t.tgt_vocab.decode(ids[0]), "<eos>"]
                alpha = torch.stack([a[0] for a in alphas[: len(words)]])
                panels.append((row, alpha, [*task.src_vocab.decode(source), "<eos>"], words))
            path = out_dir / f"attention{k}.png"
            if panels:
                s2s.plot_attention(path, panels)
            if path.exists():  # drawn now, or kept from the run (checkpoints are not committed)
                lines.append(f"![attention, test sentence {k}]({path.name})")
        return lines


EXPERIMENT = Translation(
    task=TranslationTask,
    name="translation",
    paper_table="Table 4",
    headline="translation-quick",
    # the paper stops every model early: the claims compare the best-validation-NLL checkpoints
    claims=(Claim("NAH", "reference", "best_test_bleu_beam", "test BLEU (beam), early stopping",
                  lower_is_better=False),
            Claim("hard", "reference", "best_test_bleu_beam", "test BLEU (beam), early stopping",
                  lower_is_better=False),
            Claim("NAH", "hard", "best_test_bleu_beam", "test BLEU (beam), early stopping",
                  lower_is_better=False),
            Claim("NAH", "reference", "best_valid_nll", "best valid NLL")),
    description=(
        "§6.4 / Table 4: attention NMT (dl4mt: bidirectional GRU encoder, conditional GRU "
        "decoder), English → French. Validation NLL per sentence, BLEU (sacrebleu, lower-cased "
        "tokens) with greedy and beam decoding (mean ± std over seeds)."
    ),
    presets=PRESETS,
    rows=tuple(ROWS),
    columns=[("best_valid_nll", "valid NLL (best)"), ("best_step", "best update"),
             ("best_test_bleu", "test BLEU greedy (best)"),
             ("best_test_bleu_beam", "test BLEU beam (best)"), ("valid_nll", "valid NLL (last)"),
             ("test_bleu_beam", "test BLEU beam (last)"), ("train_tokens_per_s", "train tokens/s")],
    curve=("valid_nll", "validation NLL per sentence"),
    paper={"reference": {"best_valid_nll": "65.26", "best_test_bleu_beam": "20.18"},
           "hard": {"best_valid_nll": "64.27", "best_test_bleu_beam": "21.59"},
           "NAH": {"best_valid_nll": "63.46", "best_test_bleu_beam": "22.57"}},
    notes=(
        "The paper's numbers are Europarl → newstest2011 with dl4mt's 1000-unit model (the paper "
        "preset, a GPU job); quick trains a 256-unit model on Multi30k (29k short image "
        "descriptions), whose BLEU is on a different scale: compare rows, not the paper. "
        "Multi30k: Elliott et al. 2016/2017, non-commercial research use."
    ),
)
