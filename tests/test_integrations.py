"""Issue 33: the library on real third-party code (``pip install -e '.[integrations]'``).

Models are built from small configs with random weights (nothing is downloaded). Skipped where
the packages are missing; CI installs them. timm is not among them: its wheel needs torchvision,
whose wheel on the package index needs CUDA libraries beside the CPU build of torch; its gates
(``nn.Hardsigmoid``, ``nn.Hardswish``) are tested as modules in ``tests/test_ecosystem.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import noisyact

pytestmark = pytest.mark.integrations


def _noise_and_determinism(model, make_input):
    """Training mode draws noise, eval mode does not; returns an eval output."""
    x = make_input()
    model.train()
    with torch.no_grad():
        a, b = model(**x), model(**x)
    first = a[0] if isinstance(a, tuple) else next(iter(a.values()))
    second = b[0] if isinstance(b, tuple) else next(iter(b.values()))
    assert not torch.equal(first, second), "no noise in training mode"
    model.eval()
    with torch.no_grad():
        c, d = model(**x), model(**x)
    out = c[0] if isinstance(c, tuple) else next(iter(c.values()))
    again = d[0] if isinstance(d, tuple) else next(iter(d.values()))
    assert torch.equal(out, again), "eval is not deterministic"
    return out


def test_bert_converts_with_a_report_of_what_traced(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=37)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.fx and transformers warn while tracing
        report = noisyact.noisify(model, "NAH", trace=True)
    assert ("pooler.activation", "Tanh", "NoisyHardTanh") in report.replaced
    assert report.untraced and all(why for _, why in report.untraced)  # said, not raised
    assert "not traced" in str(report)
    ids = torch.randint(0, 99, (2, 7))
    out = _noise_and_determinism(report.model, lambda: {"input_ids": ids})
    path = tmp_path / "bert.pt"
    torch.save(report.model.state_dict(), path)
    torch.manual_seed(1)
    fresh = transformers.BertModel(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = noisyact.noisify(fresh, "NAH", trace=True).model
    again.load_state_dict(torch.load(path))
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids)[0], out)


def test_gpt2_functional_tanh_of_its_gelu_is_converted():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=99, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2Model(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = noisyact.noisify(model, "NAN", trace=True)
    tanh = [r for r in report.replaced if r[1].startswith("torch.tanh")]
    assert len(tanh) == cfg.n_layer  # the tanh inside each block's gelu_new
    ids = torch.randint(0, 99, (2, 5))
    _noise_and_determinism(report.model, lambda: {"input_ids": ids})


def test_encodec_lstms_become_noisy_lstms():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.EncodecConfig(num_filters=4, hidden_size=8, upsampling_ratios=[2, 2],
                                     codebook_size=16, codebook_dim=8, target_bandwidths=[1.5],
                                     sampling_rate=800, num_lstm_layers=1)
    torch.manual_seed(0)
    model = transformers.EncodecModel(cfg)
    report = noisyact.noisify(model, "NAH")
    lstms = [r for r in report.replaced if r[1] == "LSTM"]
    assert len(lstms) == 2 and all(r[2] == "NoisyLSTM" for r in lstms)
    audio = torch.randn(1, 1, 64)
    model.train()
    with noisyact.monitor(model.encoder) as mon:  # random weights: do the gates saturate?
        model.encoder(audio).sum().backward()
    stats = mon.stats()
    gate = stats["layers.7.lstm.noise_l0.gate"]
    assert gate.calls == audio.shape[-1] // 4 and 0 <= gate.saturated <= 1  # one per step
    # the monitor tells what the gradient shows: no output moved, no gradient for p
    lstm = model.encoder.layers[7].lstm
    for name in ("gate", "cand", "cell"):
        moved = stats[f"layers.7.lstm.noise_l0.{name}"].moved
        grad = getattr(lstm.noise_l0, name).p.grad
        assert grad is not None and (moved > 0 or float(grad.abs().sum()) == 0.0)


def _lightning_run(tmp_path, steps, ckpt=None, save=None):
    L = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    from noisyact.integrations.lightning import NoiseCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.rnn = noisyact.noisify(nn.LSTM(3, 8), "NAN").model
            self.head = nn.Linear(8, 1)

        def training_step(self, batch, i):
            x, y = batch
            return nn.functional.mse_loss(self.head(self.rnn(x)[0][-1]), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = [(4 * torch.randn(5, 2, 3, generator=g), torch.randn(2, 1, generator=g))
            for _ in range(8)]
    torch.manual_seed(0)
    model = Module()
    callback = NoiseCallback(noisyact.InverseSqrt(c0=30.0, every=1, floor=0.5), log_every=2)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=CSVLogger(tmp_path),
                        callbacks=[callback],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(data, batch_size=None)  # the batches as they are
    trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt)
    if save:
        trainer.save_checkpoint(save)
    return model, callback


def test_lightning_callback_anneals_across_a_checkpoint_restart(tmp_path):
    pytest.importorskip("lightning")
    whole, cb = _lightning_run(tmp_path / "a", 6)
    c_whole = float(whole.rnn.noise_l0.gate.c)
    assert c_whole == pytest.approx(noisyact.InverseSqrt(30.0, every=1)(6))
    assert cb.last_logged["noise/c"] == pytest.approx(c_whole)
    assert any(k.endswith("/saturated") for k in cb.last_logged)
    _lightning_run(tmp_path / "b", 3, save=tmp_path / "half.ckpt")
    resumed, _ = _lightning_run(tmp_path / "c", 6, ckpt=tmp_path / "half.ckpt")
    assert float(resumed.rnn.noise_l0.gate.c) == pytest.approx(c_whole)  # not started again
    metrics = (tmp_path / "a" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "noise/c" in metrics
