"""§6.5: image captioning with soft attention, Show, Attend and Tell (Table 3).

The arctic-captions model (Xu et al. 2015; ``TASKS.md`` §5) with deterministic ("soft")
attention: h_0, c_0 = tanh(W ā); at step t, e_ti = uᵀ tanh(W_a a_i + W_d h_{t−1}),
α_t = softmax_i, ẑ_t = β_t Σ_i α_ti a_i with the selector β_t = σ(w h_{t−1}); an LSTM on
[E y_{t−1}; ẑ_t]; deep output tanh(L_h h_t + E y_{t−1} + L_z ẑ_t) → dropout → softmax. Cost: per
caption Σ_t −log p, batch mean, plus λ Σ_i (1 − Σ_t α_ti)² (doubly stochastic attention; padded
steps masked, per example, as the paper writes it; λ = ``alpha_c``, 0 as in arctic's
``train()`` defaults, 1 in its COCO script). Every sigmoid and tanh is the row's unit:
``reference`` (dropout 0.5), ``NAH``, ``NAH-nodrop`` (NAH without dropout), ``NANI``
(σ = c = 0.05) and ``NANIL`` (c = 0.5), the rows of Table 3, and ``NANIL-authors`` (NANIL with the
authors' σ = c softplus(p|∆| / (|ξ| + 1e-10)), c = 0.25; not in the paper). Dropout is PyTorch's inverted
dropout (the Theano code scales at test time instead: the same in expectation).

Data:
* ``synthetic`` (smoke, quick): SYNTHETIC scenes of coloured shapes with captions from a small
  grammar (:mod:`noisyact.experiments.shapes`), 6000/1000/1000 images with 5 captions each like
  Flickr8k; features are the 8 × 8 grid of a small CNN trained with the captioner (there are
  no pretrained weights for such images). Clearly not Flickr8k: compare rows, not the paper.
* ``flickr8k`` (paper): ``data_dir`` holding ``Flickr8k.token.txt``, the split lists
  ``Flickr_8k.{train,dev,test}Images.txt`` and ``features.pt``, a ``torch.save``d
  ``{"names": [image file names], "features": (n, L, D) tensor}``, e.g. VGG-19 conv5_4 (14 × 14
  × 512) made by :func:`noisyact.experiments.flickr8k.extract_features` from the images and
  locally held torchvision weights.

Initialisation (§6.5: "the same 0.01 scaling of the orthogonal weight init"): the recurrent U
orthogonal × ``ortho_scale`` (0.01; every row), the rest ``init_std``·N, biases 0. The model is
Xu et al.'s full soft-attention model (selector, E y and ẑ in the deep output, dropout 0.5 for
the reference), as in arctic's COCO script; arctic's ``train()`` defaults turn those off (see the
paper preset). Early stopping: the checkpoint with the best validation NLL is tested too
(``best_test_*``; arctic keeps the best validation NLL model, the paper says it stopped on BLEU).

Metrics: test NLL per caption, BLEU-1…4 (sacrebleu, cumulative, 5 references, lower-cased
tokens) of the greedy (or beam, ``beam`` > 1) caption. METEOR is not computed: it needs Java and
its paraphrase tables, which this package cannot ship or download.

Length: the settings, the attention model and the task stay in one module like every
experiment's (~400 lines); the data are :mod:`.shapes` and :mod:`.flickr8k`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..rnn import NoisyLSTMCell
from . import seq2seq as s2s
from . import shapes
from .base import Claim, Experiment, Task, model_device, rank_slice, weights
from .config import StepsConfig
from .flickr8k import extract_features, load_flickr8k


@dataclass(frozen=True)
class Row:
    """What a row changes: its units, their c and whether the model has dropout."""

    kind: str  # the units: "soft" (sigmoid/tanh), "hard" or a noisy variant ("NAH", ...)
    c: float | None = None  # c of every noisy unit; None: the library's default
    dropout: bool = True  # dropout (the ``dropout`` setting) in the deep output


# Table 3's caption gives c of NANI and NANIL; NAH keeps the library defaults; NANIL-authors
# (not in Table 3: NANIL with the authors' σ, PEERS.md §1) the c of the authors' code
ROWS = {
    "reference": Row("soft"),
    "NAH": Row("NAH"),
    "NAH-nodrop": Row("NAH", dropout=False),
    "NANI": Row("NANI", c=0.05),
    "NANIL": Row("NANIL", c=0.5),
    "NANIL-authors": Row("NANIL-authors", c=0.25),
}


@dataclass(frozen=True)
class CaptionConfig(StepsConfig):
    """Settings of the captioning experiment (defaults: the quick preset, synthetic shapes)."""

    rows: tuple[str, ...] = tuple(ROWS)
    log_every: int = 25
    steps: int = 1200
    eval_every: int = 300
    ckpt_every: int = 300
    dataset: str = "synthetic"  # "synthetic" (generated shapes) or "flickr8k" (from data_dir)
    data_dir: str = ""  # flickr8k: the folder with the captions, split lists and features.pt
    image_size: int = 32  # synthetic: image side in pixels
    max_objects: int = 2  # synthetic: shapes per image at most
    n_train: int = 6000  # training images (flickr8k: at most, the first)
    n_valid: int = 1000  # validation images (flickr8k: at most)
    n_test: int = 1000  # test images (flickr8k: at most)
    vocab: int = 10000  # words at most, eos and UNK included
    dim_word: int = 64  # word embedding size
    dim: int = 256  # LSTM units
    att_dim: int = 64  # attention MLP units
    init_std: float = 0.1  # std of the non-recurrent matrices (arctic: 0.01)
    ortho_scale: float = 0.01  # scale of the orthogonal recurrent matrices (§6.5)
    dropout: float = 0.5  # dropout in the deep output (rows with dropout)
    alpha_c: float = 0.0  # λ of the doubly stochastic attention penalty
    selector: bool = True  # the gate β_t = σ(w h_{t−1}) on the context
    beam: int = 1  # beam size of the test captions (1: greedy)
    max_out: int = 30  # longest generated caption


# 0.1·N instead of arctic's 0.01·N for the non-recurrent matrices: see translation's quick
QUICK = CaptionConfig()

PRESETS = {
    "smoke": replace(QUICK, n_train=120, n_valid=16, n_test=16, image_size=16, dim_word=12,
                     dim=16, att_dim=8, init_std=0.01, batch_size=8, steps=10, eval_every=5,
                     ckpt_every=5, log_every=2, max_out=12),
    "quick": QUICK,
    # quick for 4× its updates (≈ 5 epochs of the synthetic set) and 5 seeds, validated every
    # 300 updates for early stopping. ≈ 13 (reference) and 9 (noisy rows) updates/s on one CPU
    # thread: ≈ 10-13 min per run with evaluations, ≈ 2.5 h for the 25 runs with --jobs 2
    "long": replace(QUICK, steps=4800, seeds=5),
    # arctic-captions' train() sizes and optimiser on Flickr8k (1000 LSTM units, word 100, Graves
    # RMSProp, batch 16), NOT its model defaults: train() leaves the selector, prev2out, ctx2out
    # and dropout off, while this model always has the deep output with E y_{t-1} (prev2out)
    # and L_z ẑ_t (ctx2out) and, with selector=True, the gate β: the full model of Xu et al.
    # (their Eq. 7 and §4.2.1, as arctic's evaluate_coco.py turns on), with dropout 0.5 as the
    # noisy paper's reference (§6.5)
    "paper": replace(QUICK, dataset="flickr8k", dim_word=100, dim=1000, att_dim=512,
                     init_std=0.01, batch_size=16, optimizer="rmsprop-graves", lr=1e-4, clip=0.0,
                     steps=100_000, eval_every=2000, ckpt_every=1000, max_out=50),
}


class ShapesEncoder(nn.Module):
    """A small CNN: (B, 3, S, S) images → (B, (S/4)², 64) feature grid."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.out_dim = 64

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


class ShowAttendTell(nn.Module):
    """Soft-attention captioner with the units of one row."""

    def __init__(self, n_words: int, ctx_dim: int, cfg: CaptionConfig, kind: str,
                 c: float | None, dropout: float, encoder: nn.Module | None = None) -> None:
        super().__init__()
        W, H, A = cfg.dim_word, cfg.dim, cfg.att_dim
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.embed = nn.Embedding(n_words, W)
        self.init_h = nn.Sequential(nn.Linear(ctx_dim, H), s2s.tanh_unit(kind, H, c))
        self.init_c = nn.Sequential(nn.Linear(ctx_dim, H), s2s.tanh_unit(kind, H, c))
        self.att_ctx = nn.Linear(ctx_dim, A)
        self.att_state = nn.Linear(H, A, bias=False)
        self.att_act = s2s.tanh_unit(kind, A, c)
        self.att_u = nn.Linear(A, 1)
        self.selector = (nn.Sequential(nn.Linear(H, 1), s2s.sigmoid_unit(kind, 1, c))
                         if cfg.selector else None)
        self.cell: nn.Module = (nn.LSTMCell(W + ctx_dim, H) if kind == "soft" else
                                NoisyLSTMCell(W + ctx_dim, H, variant=kind, gate_c=c, unit_c=c))
        self.out_h = nn.Linear(H, W)
        self.out_z = nn.Linear(ctx_dim, W)
        self.out_act = s2s.tanh_unit(kind, W, c)
        self.drop = nn.Dropout(dropout)
        self.readout = nn.Linear(W, n_words)
        # U orthogonal × ortho_scale (the paper's 0.01, §6.5), the rest init_std·N (arctic:
        # 0.01, W_a included: arctic keeps it explicitly non-orthogonal)
        with torch.no_grad():
            for name, p in weights(self):  # the noise parameters keep U(-1, 1)
                if name.startswith("encoder"):
                    continue
                if p.dim() == 1:
                    p.zero_()
                elif "weight_hh" in name:
                    s2s.orthogonal_(p, cfg.ortho_scale)
                else:
                    p.normal_(0, cfg.init_std)

    def start(self, images: Tensor) -> s2s.State:
        a = self.encoder(images)
        mean = a.mean(1)
        return self.init_h(mean), self.init_c(mean), a, self.att_ctx(a)

    def step(self, prev: Tensor, state: s2s.State) -> tuple[Tensor, s2s.State, Tensor]:
        h, c, a, a_proj = state
        emb = self.embed(prev) * (prev != s2s.EOS).unsqueeze(-1)  # zero before the first word
        alpha = torch.softmax(self.att_u(self.att_act(a_proj + self.att_state(h).unsqueeze(1)))
                              .squeeze(-1), dim=-1)
        z = torch.einsum("bl,bld->bd", alpha, a)
        if self.selector is not None:
            z = self.selector(h) * z
        h, c = self.cell(torch.cat([emb, z], -1), (h, c))
        t = self.out_act(self.out_h(self.drop(h)) + emb + self.out_z(z))
        logits = self.readout(self.drop(t))
        return torch.log_softmax(logits, -1), (h, c, a, a_proj), alpha

    def forward(self, images: Tensor, caps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Per-caption NLL (B,) and the doubly stochastic penalty Σ_i (1 − Σ_t α_ti)² (B,)."""
        state = self.start(images)
        prev = torch.zeros_like(caps[0])
        nll = torch.zeros(caps.shape[1], device=caps.device)
        total_alpha = torch.zeros(caps.shape[1], state[2].shape[1], device=caps.device)
        for t in range(caps.shape[0]):
            logp, state, alpha = self.step(prev, state)
            nll = nll - logp.gather(1, caps[t].unsqueeze(1)).squeeze(1) * mask[t]
            total_alpha = total_alpha + alpha * mask[t].unsqueeze(1)
            prev = caps[t]
        return nll, ((1 - total_alpha) ** 2).sum(1)


class CaptionTask(s2s.EarlyStopping, Task):
    _cache: ClassVar[dict[tuple[Any, ...], Any]] = {}

    def __init__(self, row: str, cfg: CaptionConfig, seed: int) -> None:
        if cfg.dataset not in ("synthetic", "flickr8k"):
            raise ValueError(f"dataset must be 'synthetic' or 'flickr8k', got {cfg.dataset!r}")
        self.row, self.cfg, self.seed = row, cfg, seed
        key = (cfg.dataset, cfg.data_dir, cfg.image_size, cfg.max_objects, cfg.n_train,
               cfg.n_valid, cfg.n_test, cfg.vocab)
        if key not in self._cache:
            self._cache[key] = self._prepare()
        self.vocab, self.inputs, self.captions, self.ids = self._cache[key]
        # one training example per (image, caption)
        self.pairs = [(i, j) for i, caps in enumerate(self.ids["train"])
                      for j in range(len(caps))]
        self.batches = s2s.EpochBatches([len(self.ids["train"][i][j]) for i, j in self.pairs],
                                        cfg.batch_size, seed)
        mean_len = sum(len(self.ids["train"][i][j]) + 1 for i, j in self.pairs) / len(self.pairs)
        self.tokens_per_step = round(cfg.batch_size * mean_len)

    def _prepare(self) -> Any:
        c = self.cfg
        if c.dataset == "synthetic":
            data = {}
            for k, (split, n) in enumerate((("train", c.n_train), ("valid", c.n_valid),
                                            ("test", c.n_test))):
                images, caps, _ = shapes.make_dataset(n, 7_001 + k,
                                                      c.image_size, c.max_objects)
                data[split] = (torch.from_numpy(images), caps)
        else:
            # n_train/n_valid/n_test: at most that many images (the first) of each split; the
            # paper preset's are Flickr8k's own sizes, the smoke preset's keep it seconds
            size = {"train": c.n_train, "valid": c.n_valid, "test": c.n_test}
            data = {s: (x[: size[s]], caps[: size[s]])
                    for s, (x, caps) in load_flickr8k(c.data_dir).items()}
        tok = {s: [[s2s.tokenize(x) for x in caps] for caps in data[s][1]] for s in data}
        vocab = s2s.Vocab.build([t for caps in tok["train"] for t in caps], c.vocab)
        ids = {s: [[vocab.encode(t) for t in caps] for caps in tok[s]] for s in tok}
        return vocab, {s: data[s][0] for s in data}, tok, ids

    def build_model(self) -> nn.Module:
        row = ROWS[self.row]
        encoder = ShapesEncoder() if self.cfg.dataset == "synthetic" else None
        ctx = encoder.out_dim if encoder is not None else self.inputs["train"].shape[-1]
        dropout = self.cfg.dropout if row.dropout else 0.0
        return ShowAttendTell(len(self.vocab), ctx, self.cfg, row.kind, row.c, dropout, encoder)

    def _tensors(self, split: str, pairs: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
        images = self.inputs[split][[i for i, _ in pairs]].float()
        caps, mask = s2s.pad([self.ids[split][i][j] for i, j in pairs])
        return images, caps, mask

    def batch(self, step: int, rank: int, world_size: int) -> tuple[Tensor, Tensor, Tensor]:
        idx = self.batches(step)
        idx = idx[rank_slice(len(idx), rank, world_size)]
        return self._tensors("train", [self.pairs[i] for i in idx])

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        dev = model_device(model)
        nll, penalty = model(*(t.to(dev) for t in batch))
        return nll.mean() + self.cfg.alpha_c * penalty.mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """NLL per caption over all captions, BLEU-1…4 of one caption per image (5 refs)."""
        model.eval()
        dev = model_device(model)
        pairs = [(i, j) for i, caps in enumerate(self.ids[split]) for j in range(len(caps))]
        nll = 0.0
        for lo in range(0, len(pairs), 128):
            b = self._tensors(split, pairs[lo: lo + 128])
            nll += float(model(*(t.to(dev) for t in b))[0].sum())
        hyps = self.describe(model, split)
        refs = self.captions[split]
        out = {"nll": nll / len(pairs)}
        for n in range(1, 5):
            out[f"bleu{n}"] = s2s.bleu(hyps, refs, max_order=n)
        return out

    def describe(self, model: nn.Module, split: str,
                 which: list[int] | None = None) -> list[list[str]]:
        dev = model_device(model)
        images = self.inputs[split] if which is None else self.inputs[split][which]
        hyps: list[list[str]] = []
        for lo in range(0, len(images), 128):
            state = model.start(images[lo: lo + 128].float().to(dev))
            if self.cfg.beam > 1:
                for b in range(state[0].shape[0]):
                    one = tuple(s[b: b + 1] for s in state)
                    hyps.append(self.vocab.decode(s2s.beam_search(
                        model.step, one, self.cfg.beam, self.cfg.max_out)))
            else:
                ids, _ = s2s.greedy(model.step, state, state[0].shape[0], self.cfg.max_out)
                hyps += [self.vocab.decode(s) for s in ids]
        return hyps


def plot_caption_attention(path: Path, examples: list[tuple[Tensor | None, list[str],
                                                           list[Tensor]]], title: str) -> Path:
    """One line per example: the image, then per generated word its attention over the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(words) for _, words, _ in examples) + 1
    fig, axes = plt.subplots(len(examples), n, figsize=(1.4 * n, 1.6 * len(examples)),
                             squeeze=False)
    for line, (image, words, alphas) in zip(axes, examples, strict=True):
        side = round(alphas[0].numel() ** 0.5)
        if image is not None and image.shape[0] == 3:
            line[0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        for ax, w, a in zip(line[1:], words, alphas, strict=False):
            ax.imshow(a.reshape(side, side).numpy(), cmap="gray", vmin=0)
            ax.set_title(w, fontsize=8)
        for ax in line:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


class Captioning(Experiment):
    def figures(self, out_dir: Path, cfg: CaptionConfig) -> list[str]:
        """Attention maps of each row's seed-0 model on three test images (a folder without
        checkpoints, such as a committed one, keeps the figures its run drew)."""
        rows = list(cfg.rows or self.rows)
        lines = []
        for row in rows:
            task = CaptionTask(row, cfg, 0)
            model = s2s.load_model_of(out_dir / row / "seed0", task.build_model)
            kept = out_dir / f"attention-{row}.png"
            if model is None:  # no checkpoint (a committed folder): keep the run's figure
                if kept.exists():
                    lines.append(f"![{row} attention]({kept.name})")
                continue
            examples = []
            for k in range(min(3, len(task.inputs["test"]))):
                image = task.inputs["test"][k: k + 1].float()
                ids, alphas = s2s.greedy(model.step, model.start(image), 1, cfg.max_out)
                words = [*task.vocab.decode(ids[0]), "<eos>"]
                examples.append((image[0] if cfg.dataset == "synthetic" else None, words,
                                 [a[0] for a in alphas[: len(words)]]))
            path = plot_caption_attention(out_dir / f"attention-{row}.png", examples,
                                          f"{row}: attention per generated word (test images)")
            lines.append(f"![{row} attention]({path.name})")
        return lines


EXPERIMENT = Captioning(
    task=CaptionTask,
    name="captioning",
    paper_table="Table 3",
    headline="captioning-long-fresh",
    # the paper stops every model early: the claims compare the best-validation-NLL checkpoints
    claims=(Claim("NAH", "reference", "best_test_bleu4", "BLEU-4, early stopping",
                  lower_is_better=False),
            Claim("NAH-nodrop", "reference", "best_test_nll", "test NLL, early stopping"),
            Claim("NAH", "reference", "best_test_nll", "test NLL, early stopping"),
            Claim("NANI", "reference", "best_test_bleu4", "BLEU-4, early stopping",
                  lower_is_better=False),
            Claim("NANIL", "reference", "best_test_bleu4", "BLEU-4, early stopping",
                  lower_is_better=False),
            Claim("NANIL-authors", "NANIL", "best_test_bleu4", "BLEU-4, early stopping",
                  lower_is_better=False)),
    description=(
        "§6.5 / Table 3: Show, Attend and Tell with soft attention. quick/smoke run on a "
        "SYNTHETIC captioned-shapes set generated by noisyact (not Flickr8k); paper reads "
        "Flickr8k features from data_dir. Test NLL per caption and BLEU-1…4 (sacrebleu, 5 "
        "references; mean ± std over seeds). METEOR: not computed (needs Java and its "
        "paraphrase tables)."
    ),
    presets=PRESETS,
    rows=tuple(ROWS),
    # early stopping (the best validation NLL's checkpoint), then the last model's BLEU-4/NLL
    columns=[("best_test_bleu1", "BLEU-1"), ("best_test_bleu2", "BLEU-2"),
             ("best_test_bleu3", "BLEU-3"), ("best_test_bleu4", "BLEU-4"),
             ("best_test_nll", "test NLL"), ("best_step", "best update"),
             ("test_bleu4", "BLEU-4 (last)"), ("test_nll", "test NLL (last)"),
             ("train_tokens_per_s", "train tokens/s")],
    curve=("valid_nll", "validation NLL per caption"),
    # Table 3 (BLEU-1…4, test NLL), beside the early-stopped checkpoint's scores
    paper={row: dict(zip(("best_test_bleu1", "best_test_bleu2", "best_test_bleu3",
                          "best_test_bleu4", "best_test_nll"), values, strict=True))
           for row, values in (("reference", ("67", "44.8", "29.9", "19.5", "40.33")),
                               ("NAH", ("66", "45.8", "30.69", "20.9", "40.17")),
                               ("NAH-nodrop", ("64.9", "44.2", "30.7", "20.9", "39.8")),
                               ("NANI", ("66", "45.0", "30.6", "20.7", "40.0")),
                               ("NANIL", ("66", "44.6", "30.1", "20.0", "39.9")))},
    notes=(
        "The paper's numbers are Flickr8k (the paper preset); quick is the synthetic shapes "
        "set, whose captions come from a 30-word grammar, so its BLEU is far higher and only "
        "the ordering of rows can be compared."
    ),
)

__all__ = ["CaptionTask", "ShowAttendTell", "extract_features", "load_flickr8k"]
