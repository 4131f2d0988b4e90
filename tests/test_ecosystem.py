"""Issue 33: the library on the code people use (parametrizations, tracing, torch.func,
conversion of third-party-style modules, annealing across restarts, small surface defects).

Each test is a defect reproduced on the code before it was fixed. Models here are stand-ins built
from torch modules with the structure of the third-party code named (no download, no extra
package); ``tests/test_integrations.py`` runs the real libraries when they are installed.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

import noisyact
from noisyact import cli
from noisyact.convert import _CONVERTERS
from noisyact.training.report import mean_std

# --- NoisyLSTM/NoisyGRU as drop-ins -------------------------------------------------------------

@pytest.mark.parametrize("layer", [noisyact.NoisyLSTM, noisyact.NoisyGRU])
def test_parametrized_weights_are_read_through_the_parametrization(path, layer):
    torch.manual_seed(0)
    rnn = layer(4, 8).eval()
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        plain = rnn(x)[0]
    parametrize.register_parametrization(rnn, "weight_hh_l0", nn.Identity())
    with torch.no_grad():
        torch.testing.assert_close(rnn(x)[0], plain)

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    parametrize.register_parametrization(rnn, "weight_ih_l0", Double())
    with torch.no_grad():
        assert not torch.allclose(rnn(x)[0], plain)  # the parametrization is applied
    wn = weight_norm(layer(4, 8), "weight_ih_l0")
    out = wn(x)[0]
    out.sum().backward()
    assert wn.parametrizations.weight_ih_l0.original0.grad is not None


@pytest.mark.parametrize(("noisy", "torch_cls"), [(noisyact.NoisyLSTM, nn.LSTM),
                                                  (noisyact.NoisyGRU, nn.GRU)])
def test_the_attribute_surface_of_torch_recurrent_layers(noisy, torch_cls):
    for kw in ({}, {"bias": False}, {"bidirectional": True}):
        ours, theirs = noisy(4, 8, 2, **kw), torch_cls(4, 8, 2, **kw)
        assert ours._flat_weights_names == theirs._flat_weights_names
        assert [[w.shape for w in ws] for ws in ours.all_weights] == \
            [[w.shape for w in ws] for ws in theirs.all_weights]
        assert all(a is b for a, b in zip(ours._flat_weights,
                                          [getattr(ours, n) for n in ours._flat_weights_names],
                                          strict=True))
        ours.flatten_parameters()  # a no-op, as code written for cuDNN calls it


def test_jit_trace_and_legacy_onnx_export_of_an_eval_lstm(tmp_path):
    torch.manual_seed(0)
    lstm = noisyact.NoisyLSTM(4, 8).eval()
    x = torch.randn(3, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own warnings about Python values
        traced = torch.jit.trace(lstm, x)
    torch.testing.assert_close(traced(x)[0], lstm(x)[0])
    pytest.importorskip("onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(lstm, (x,), str(tmp_path / "lstm.onnx"), dynamo=False)
    assert (tmp_path / "lstm.onnx").stat().st_size > 0


def test_a_bare_tensor_state_of_an_lstm_is_named():
    with pytest.raises(ValueError, match=r"must be a tuple \(h_0, c_0\).*got a Tensor"):
        noisyact.NoisyLSTM(4, 8)(torch.randn(3, 2, 4), torch.zeros(2, 8))


# --- noisify ------------------------------------------------------------------------------------

def test_a_misspelled_keyword_is_refused_with_the_right_one():
    model = nn.Sequential(nn.LSTM(4, 8))
    with pytest.raises(ValueError, match="unknown keyword 'clip_ouput'; did you mean 'clip_output'"):
        noisyact.noisify(model, "NAH", clip_ouput=True)
    with pytest.raises(ValueError, match="unknown keyword 'alhpa'; did you mean 'alpha'"):
        noisyact.noisify(nn.Sequential(nn.Tanh()), "NAH", alhpa=1.0)
    assert isinstance(model[0], nn.LSTM)
    # the recurrent layers' own keywords do not reach the activations
    mixed = nn.Sequential(nn.Sigmoid(), nn.LSTM(4, 8))
    noisyact.noisify(mixed, "NAN", gate_c=0.1)
    assert mixed[1].noise_l0.gate.c == pytest.approx(0.1) and mixed[0].c == pytest.approx(0.5)


class _Boom(nn.Module):
    def forward(self, x):
        return x


def test_a_failed_conversion_leaves_the_model_untouched():
    def boom(m, variant, kw):
        raise RuntimeError("converter failed")

    _CONVERTERS[_Boom] = boom
    try:
        model = nn.Sequential(nn.Sigmoid(), nn.Sequential(nn.Tanh(), nn.LSTM(4, 8)), _Boom())
        before = [type(m) for m in model.modules()]
        with pytest.raises(RuntimeError, match="converter failed"):
            noisyact.noisify(model, "NAH")
        assert [type(m) for m in model.modules()] == before
    finally:
        del _CONVERTERS[_Boom]


def test_torch_hard_gates_keep_their_function():
    torch.manual_seed(0)
    se = nn.Sequential(nn.Linear(6, 6), nn.Hardswish(), nn.Linear(6, 6), nn.Hardsigmoid())
    x = 4 * torch.randn(32, 6)
    before = se(x)
    report = noisyact.noisify(se, "NAN", alpha=1.0)
    assert [r[1:] for r in report.replaced] == [("Hardswish", "NoisyHardswish"),
                                                ("Hardsigmoid", "NoisyTorchHardsigmoid")]
    se.eval()
    torch.testing.assert_close(se(x), before)  # α = 1, NAN: the expectation is h
    se.train()
    assert not torch.equal(se(x), se(x))  # and the noise is there in training


class ForecastingLSTM(nn.LSTM):
    """pytorch-forecasting's pattern: a subclass that only adds constructor options."""

    def __init__(self, *args, extra=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra = extra


class OwnForwardLSTM(nn.LSTM):
    def forward(self, x, hx=None):
        return super().forward(x.flip(0), hx)


def test_subclasses_of_torch_layers():
    model = nn.ModuleDict({"a": ForecastingLSTM(4, 8, extra=1), "b": OwnForwardLSTM(4, 8)})
    report = noisyact.noisify(model, "NAH")
    assert isinstance(model["a"], noisyact.NoisyLSTM)
    assert isinstance(model["b"], OwnForwardLSTM)
    assert report.skipped == [("b", report.skipped[0][1])]
    assert "with its own forward" in report.skipped[0][1]


def test_nothing_to_convert_says_what_is_converted():
    text = str(noisyact.noisify(nn.Sequential(nn.Linear(2, 2), nn.GELU()), "NAH"))
    assert "replaced 0 module(s)" in text and "nothing to convert" in text
    assert "nn.Hardsigmoid" in text and "trace=True" in text


def test_keep_function_converts_a_pretrained_model_without_changing_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 5), nn.Sigmoid(), nn.Linear(5, 5), nn.Tanh(),
                          nn.Hardtanh(), nn.LSTM(5, 5))
    x = 3 * torch.randn(4, 5)
    before = model[:5](x)
    report = noisyact.noisify(model, "NAN", keep_function=True)
    assert [r[2] for r in report.replaced] == ["NoisySigmoid", "NoisyTanh", "NoisyHardTanh"]
    assert isinstance(model[5], nn.LSTM) and "keep_function" in report.skipped[0][1]
    model.eval()
    assert torch.equal(model[:5](x), before)
    model.train()
    assert not torch.equal(model[:5](x), before)


class _Gated(nn.Module):
    """A block with a functional gate (as a transformer's MLP), traceable on its own."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sigmoid(self.lin(x)) * x


class _Untraceable(nn.Module):
    """Data-dependent control flow at the top (as whole transformers models have)."""

    def __init__(self):
        super().__init__()
        self.block = _Gated()
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        if x.sum() > 0:  # torch.fx cannot trace this
            x = x + 1
        return torch.tanh(self.head(self.block(x)))


def test_trace_falls_back_to_the_parts_that_trace():
    model = _Untraceable()
    report = noisyact.noisify(model, "NAN", trace=True)
    assert report.model is model  # the root could not be traced: it stays the module it was
    assert [p for p, _ in report.untraced] == [""] and "TraceError" in report.untraced[0][1]
    assert report.traced == ["block"]  # head is an nn.Linear: nothing of the model's own
    assert isinstance(model.block, torch.fx.GraphModule)
    assert [r[1] for r in report.replaced] == ["torch.sigmoid in block"]
    assert any(isinstance(m, noisyact.NoisyHardSigmoid) for m in model.block.modules())
    text = str(report)
    assert "not traced <root>" in text and "traced block" in text
    model(torch.randn(2, 4)).sum().backward()  # the converted model runs


# --- torch.func -------------------------------------------------------------------------------

def test_vmap_and_jacrev_in_training_mode():
    act = noisyact.NoisyHardTanh(variant="NAH").train()
    y = torch.func.vmap(act, randomness="different")(torch.full((4, 5), 3.0))
    assert y.shape == (4, 5) and not torch.equal(y[0], y[1])  # other noise in each row
    jac = torch.func.jacrev(lambda v: act(v))(torch.linspace(-2, 2, 5))
    assert jac.shape == (5, 5)
    lstm = noisyact.NoisyLSTM(3, 4).train()
    out = torch.func.vmap(lambda s: lstm(s)[0], randomness="different")(torch.randn(2, 5, 3))
    assert out.shape == (2, 5, 4)


# --- annealing across a restart ---------------------------------------------------------------

def test_an_annealer_resumes_from_the_model_it_is_given():
    schedule = noisyact.InverseSqrt(c0=30.0, every=200, floor=0.5)
    model = nn.Sequential(noisyact.NoisyHardTanh("NAN"))
    annealer = noisyact.NoiseAnnealer(model, schedule)
    for _ in range(2000):
        annealer.step()
    saved = model.state_dict()
    again = nn.Sequential(noisyact.NoisyHardTanh("NAN"))
    again.load_state_dict(saved)
    with pytest.warns(UserWarning, match="resuming the schedule at step 2000"):
        resumed = noisyact.NoiseAnnealer(again, schedule)
    assert resumed.c == annealer.c and resumed.step() == pytest.approx(schedule(2001))
    with warnings.catch_warnings():  # a model as built starts at step 0, without a word
        warnings.simplefilter("error")
        assert noisyact.NoiseAnnealer(nn.Sequential(noisyact.NoisyHardTanh("NAN")),
                                      schedule).last_step == 0
    odd = nn.Sequential(noisyact.NoisyHardTanh("NAN"))
    odd[0].set_c(31.7)  # no step of the schedule gives it
    with pytest.warns(UserWarning, match="not a value of this schedule"):
        assert noisyact.NoiseAnnealer(odd, schedule).last_step == 0


# --- small ones -------------------------------------------------------------------------------

def test_alpha_as_a_string_is_refused():
    with pytest.raises(ValueError, match="alpha must be a real number, got str"):
        noisyact.NoisyHardTanh("NAH", alpha="1.15")


def test_torchscript_in_training_mode_says_call_eval():
    scripted = torch.jit.script(noisyact.NoisyHardTanh("NAH"))
    with pytest.raises(Exception, match=r"call \.eval\(\) on the module before torch.jit.script"):
        scripted(torch.zeros(2))
    assert torch.equal(torch.jit.script(noisyact.NoisyHardTanh("NAN").eval())(torch.zeros(2)),
                       torch.zeros(2))


def test_one_seed_has_no_spread_and_curves_say_seed(tmp_path, monkeypatch):
    assert mean_std([1.234]) == "1.23" and mean_std([1.0, 3.0]) == "2.00 ± 1.41"
    from matplotlib.axes import Axes

    from noisyact.training.report import RowResult, plot_curves

    labels, plot = [], Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: labels.append(k.get("label"))
                        or plot(self, *a, **k))
    one = RowResult("NAN", curves=[[{"step": 1, "v": 1.0}, {"step": 3, "v": 0.5}]])
    two = RowResult("NAH", curves=[[{"step": 1, "v": 1.0}]] * 2)
    assert plot_curves([one, two], "v", "v", tmp_path / "c.png") is not None
    assert labels == ["NAN (1 seed)", "NAH (2 seeds)"]


def test_list_describes_and_wraps(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ablation (" in out and "rows; `rows=` picks some)" in out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "word-level LSTM language model" in out


def test_run_help_explains_the_experiment_and_device(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "one of unique-count" in out and "where to train" in out
