"""Translation and captioning: data, decoding, BLEU, the models' wiring, the pipelines."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from noisyact import NoisyHardTanh, NoisyLSTMCell
from noisyact.experiments import captioning as cap
from noisyact.experiments import get, run_experiment, shapes
from noisyact.experiments import seq2seq as s2s
from noisyact.experiments import translation as mt

FIXTURE = Path(__file__).parent / "data" / "multi30k"
pytest.importorskip("sacrebleu", reason="BLEU needs sacrebleu (pip install 'noisyact[mt]')")


def test_tokenize_and_vocab():
    assert s2s.tokenize("L'homme, en Bleu.") == ["l", "'", "homme", ",", "en", "bleu", "."]
    v = s2s.Vocab.build([["b", "a", "b"], ["c", "b", "a"]], max_size=4)
    assert v.itos == ["<eos>", "<unk>", "b", "a"]  # by frequency, capped: c is UNK
    assert v.encode(["a", "c"]) == [3, s2s.UNK] and v.decode([2, 3, 0, 2]) == ["b", "a"]


def test_pad_scores_one_eos():
    ids, mask = s2s.pad([[5, 6], [7]])
    assert ids.t().tolist() == [[5, 6, 0], [7, 0, 0]]
    assert mask.t().tolist() == [[1, 1, 1], [1, 1, 0]]


def test_epoch_batches_cover_every_example_once_with_similar_lengths():
    lengths = [i % 17 for i in range(400)]
    eb = s2s.EpochBatches(lengths, 5, seed=0)
    seen = [i for step in range(eb.per_epoch) for i in eb(step)]
    assert sorted(seen) == list(range(400))
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b)
              for b in (eb(s) for s in range(eb.per_epoch))]
    assert sum(spread) / len(spread) < 2
    assert eb(eb.per_epoch) != eb(0) or eb(eb.per_epoch + 1) != eb(1)  # reshuffled per epoch
    with pytest.raises(ValueError, match="batch_size"):
        s2s.EpochBatches([1, 2], 5, 0)


class _Toy:
    """A decoder whose next-token probabilities depend only on the previous token (a Markov
    chain), so the answers are known: greedy takes 2 (.55), then 3 (.5), then eos (.9), total
    .2475; the best sequence is 3, eos: .35 · .9 = .315; 2, eos is .55 · .4 = .22."""

    table = torch.log(torch.tensor([
        [0.1, 0.0, 0.55, 0.35],  # first step (previous token 0)
        [1.0, 0.0, 0.0, 0.0],
        [0.4, 0.0, 0.1, 0.5],  # after 2
        [0.9, 0.0, 0.05, 0.05],  # after 3
    ]).clamp_min(1e-9))

    def step(self, prev, state):
        return self.table[prev], state, torch.zeros(prev.shape[0], 1)


def test_greedy_and_beam_search_on_a_known_chain():
    toy = _Toy()
    ids, alphas = s2s.greedy(toy.step, (torch.zeros(1, 1),), 1, 10)
    assert ids == [[2, 3]] and len(alphas) == 3
    assert s2s.beam_search(toy.step, (torch.zeros(1, 1),), 1, 10) == [2, 3]
    assert s2s.beam_search(toy.step, (torch.zeros(1, 1),), 3, 10) == [3]
    assert s2s.beam_search(toy.step, (torch.zeros(1, 1),), 3, 1) in ([2], [3])  # cut at max_len
    with pytest.raises(ValueError, match="beam"):
        s2s.beam_search(toy.step, (torch.zeros(1, 1),), 0, 10)


def test_bleu_known_values():
    ref = ["the", "cat", "is", "on", "the", "mat"]
    assert s2s.bleu([ref], [[ref]]) == pytest.approx(100.0)
    assert s2s.bleu([["dog"]], [[ref]]) == pytest.approx(0.0, abs=1e-9)
    # unigram precision 4/6 with brevity penalty 1: BLEU-1 = 66.67
    hyp = ["the", "cat", "sat", "by", "the", "mat"]
    assert s2s.bleu([hyp], [[ref]], max_order=1) == pytest.approx(100 * 4 / 6, rel=1e-4)
    # a second reference that matches raises the score
    assert s2s.bleu([hyp], [[ref, hyp]]) == pytest.approx(100.0)


def test_orthogonal_blocks_and_masked_attention():
    w = s2s.orthogonal_(torch.empty(6, 3), scale=0.01)
    for block in (w[:3], w[3:]):
        assert torch.allclose(block @ block.t(), 1e-4 * torch.eye(3), atol=1e-9)
    a = s2s.masked_attention(torch.tensor([[1e4], [0.0], [-1e4]]), torch.tensor([[0], [1], [1]]))
    assert torch.allclose(a, torch.tensor([[0.0], [1.0], [0.0]]))  # no overflow, mask honoured


def _mt_cfg(**kw):
    return replace(mt.PRESETS["smoke"], **{"data_dir": str(FIXTURE), **kw})


def test_corpus_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        mt.load_corpus(_mt_cfg(data_dir=str(tmp_path / "nothing"), corpus="europarl"))
    (tmp_path / "train.en").write_text("a\nb\n")
    (tmp_path / "train.fr").write_text("a\n")
    for stem in ("val", "test_2016_flickr"):
        for lang in ("en", "fr"):
            (tmp_path / f"{stem}.{lang}").write_text("x\n")
    with pytest.raises(ValueError, match="not a parallel corpus"):
        mt.load_corpus(_mt_cfg(data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="missing"):
        mt.load_corpus(_mt_cfg(data_dir=str(tmp_path), corpus="europarl"))


@pytest.mark.parametrize("row", ["reference", "hard", "NAH"])
def test_nmt_units_and_gradients(row):
    task = mt.TranslationTask(row, _mt_cfg(), 0)
    torch.manual_seed(0)
    model = task.build_model()
    noisy = [m for m in model.modules() if isinstance(m, NoisyHardTanh)]
    # init state, attention, deep output + the candidates of the 2 encoder and 2 decoder GRUs
    assert len(noisy) == (7 if row == "NAH" else 0)
    loss = task.loss(model, task.batch(0, 0, 1))
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad is not None for n, p in model.named_parameters() if not n.endswith(".p"))
    assert model.encoder.weight_hh_l0.abs().max() < 0.05  # orthogonal × 0.01
    model.eval()
    b = task.batch(1, 0, 1)
    assert torch.equal(model(*b), model(*b))


@torch.no_grad()
def test_nmt_teacher_forced_nll_equals_stepwise_scores():
    task = mt.TranslationTask("NAH", _mt_cfg(), 0)
    model = task.build_model().eval()
    src, sm, tgt, tm = task.batch(0, 0, 1)
    nll = model(src, sm, tgt, tm)
    state, prev, manual = model.start(src[:, :1], sm[:, :1]), torch.zeros(1, dtype=torch.long), 0.0
    for j in range(int(tm[:, 0].sum())):
        logp, state, alpha = model.step(prev, state)
        manual -= float(logp[0, tgt[j, 0]])
        assert alpha.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert alpha[0, int(sm[:, 0].sum()):].abs().max() == 0  # no attention on padding
        prev = tgt[j, :1]
    assert nll[0].item() == pytest.approx(manual, rel=1e-4)


@pytest.mark.slow
def test_translation_smoke_pipeline(tmp_path):
    out = run_experiment(get("translation"), "smoke", out=tmp_path / "mt", progress=False,
                         overrides=[f"data_dir={FIXTURE}", "rows=reference,NAH", "eval_size=12"],
                         log=lambda *a: None)
    final = json.loads((out / "NAH" / "seed0" / "final.json").read_text())
    for key in ("valid_nll", "test_bleu", "test_bleu_beam", "train_tokens_per_s"):
        assert final[key] is not None
    assert (out / "attention0.png").exists() and "attention0.png" in (out / "results.md").read_text()
    _report_without_checkpoints_keeps(out, "translation", ["attention0.png", "attention2.png"])


def _report_without_checkpoints_keeps(out, name, figures):
    """A committed run folder has no checkpoints: regenerating its report keeps the figures its
    run drew (they cannot be drawn again) instead of dropping them from results.md."""
    from noisyact.experiments import write_report

    for ck in out.glob("*/seed*/checkpoint.pt"):
        ck.unlink()
    page = write_report(get(name), out).read_text()
    for fig in figures:
        assert f"({fig})" in page, fig


def test_synthetic_shapes_captions_describe_the_scene():
    images, caps, scenes = shapes.make_dataset(50, seed=3, size=24)
    assert images.shape == (50, 3, 24, 24) and images.min() >= 0 and images.max() <= 1
    for objs, five in zip(scenes, caps, strict=True):
        assert len(five) == 5
        for text in five:
            for ob in objs:  # every object is named with its colour and shape
                assert f"{ob.colour} {ob.shape}" in text
        cells = [ob.cell for ob in objs]
        assert len(set(cells)) == len(cells)
    again = shapes.make_dataset(50, seed=3, size=24)
    assert (again[0] == images).all() and again[1] == caps
    with pytest.raises(ValueError, match="image size"):
        shapes.make_dataset(1, 0, size=8)


def test_rendered_colour_sits_where_the_caption_says():
    ob = shapes.Obj("square", "red", "large", (0, 2))  # top right
    img = shapes.render([ob], 30, __import__("numpy").random.default_rng(0))
    red = (img[0] > 0.8) & (img[1] < 0.2)
    ys, xs = red.nonzero()
    assert ys.mean() < 10 and xs.mean() > 20


def _cap_cfg(**kw):
    return replace(cap.PRESETS["smoke"], **kw)


@pytest.mark.parametrize("row", ["reference", "NAH-nodrop", "NANI", "NANIL"])
def test_captioner_rows(row):
    task = cap.CaptionTask(row, _cap_cfg(), 0)
    torch.manual_seed(0)
    model = task.build_model()
    cells = [m for m in model.modules() if isinstance(m, NoisyLSTMCell)]
    assert (len(cells) == 1) == (row != "reference")
    if cap.ROWS[row].c is not None:
        assert float(cells[0].noise_l0.gate.c) == pytest.approx(cap.ROWS[row].c)
    assert model.drop.p == (0.0 if row.endswith("nodrop") else 0.5)
    images, caps, mask = task.batch(0, 0, 1)
    nll, penalty = model(images, caps, mask)
    assert nll.shape == penalty.shape == (images.shape[0],)
    # the penalty uses only real steps: with one step α sums to 1 over L locations
    L = model.start(images)[2].shape[1]
    one = torch.zeros_like(mask)
    one[0] = 1
    _, p1 = model(images, caps, one)
    alpha = model.step(torch.zeros_like(caps[0]), model.start(images))[2]
    if row == "reference":  # deterministic: the first step's attention is reproducible
        assert torch.allclose(p1, ((1 - alpha) ** 2).sum(1), atol=1e-5)
    assert p1.min() >= L - 2
    task.loss(model, (images, caps, mask)).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_flickr8k_reader_errors_and_format(tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        cap.load_flickr8k("")
    (tmp_path / "Flickr8k.token.txt").write_text(
        "".join(f"im{i}.jpg#{j}\tA dog runs {j}\n" for i in range(3) for j in range(5)))
    with pytest.raises(ValueError, match=r"features\.pt"):
        cap.load_flickr8k(str(tmp_path))
    torch.save({"names": ["im0.jpg", "im1.jpg", "im2.jpg"], "features": torch.ones(3, 4, 2)},
               tmp_path / "features.pt")
    for split, names in (("train", "im0.jpg"), ("dev", "im1.jpg"), ("test", "im2.jpg")):
        (tmp_path / f"Flickr_8k.{split}Images.txt").write_text(names + "\n")
    data = cap.load_flickr8k(str(tmp_path))
    assert data["test"][0].shape == (1, 4, 2) and len(data["test"][1][0]) == 5
    (tmp_path / "Flickr_8k.devImages.txt").write_text("im9.jpg\n")
    with pytest.raises(ValueError, match=r"im9\.jpg"):
        cap.load_flickr8k(str(tmp_path))


def test_captioning_smoke_pipeline(tmp_path):
    out = run_experiment(get("captioning"), "smoke", out=tmp_path / "cap", progress=False,
                         overrides=["rows=reference,NANIL"], log=lambda *a: None)
    final = json.loads((out / "NANIL" / "seed0" / "final.json").read_text())
    assert all(final[f"test_bleu{n}"] is not None for n in range(1, 5))
    assert final["test_bleu1"] >= final["test_bleu4"]
    assert (out / "attention-NANIL.png").exists()
    _report_without_checkpoints_keeps(out, "captioning", ["attention-reference.png",
                                                          "attention-NANIL.png"])
