"""Module conventions, export, registry, noisify, parameter groups and annealing."""

import math

import numpy as np
import pytest
import reference as ref
import torch
from torch import nn

import noisyact
from noisyact import anneal


def test_repr_parameters_and_buffers():
    m = noisyact.NoisyHardTanh("NAN", alpha=1.1, c=0.3, num_parameters=5, dim=-1)
    assert repr(m) == "NoisyHardTanh(variant=NAN, alpha=1.1, c=0.3, num_parameters=5, dim=-1)"
    assert dict(m.named_parameters()).keys() == {"p"}
    assert m.p.shape == (5,)
    sd = m.state_dict()
    assert set(sd) == {"p", "c"} and sd["c"].item() == pytest.approx(0.3)
    assert repr(noisyact.NoisyHardSigmoid("NANI")) == "NoisyHardSigmoid(variant=NANI, c=0.05)"
    assert noisyact.NoisyHardSigmoid("NANI").p is None


def test_defaults_follow_the_documented_table():
    assert noisyact.NoisyHardTanh().alpha == 1.15
    assert noisyact.NoisyHardSigmoid().alpha == 1.1
    assert float(noisyact.NoisyHardTanh("NANIS").c) == 0.25
    assert noisyact.NoisyHardTanh().variant == "NAH"


def test_p_initialised_uniform_minus_one_one():
    torch.manual_seed(0)
    p = noisyact.NoisyHardTanh(num_parameters=20000).p.detach()
    assert p.min() >= -1 and p.max() <= 1
    assert abs(p.mean().item()) < 0.02 and abs(p.var().item() - 1 / 3) < 0.02


def test_factory_kwargs_and_inplace():
    m = noisyact.NoisyHardSigmoid(num_parameters=3, dtype=torch.float64, device="cpu", inplace=True)
    assert m.p.dtype == torch.float64
    x = torch.randn(2, 3, dtype=torch.float64)
    assert m(x).dtype == torch.float64


def test_eval_is_deterministic_and_equals_expectation():
    m = noisyact.NoisyHardTanh("NAH", alpha=1.15, c=0.9, num_parameters=4, dim=-1).double()
    x = torch.linspace(-4, 4, 40, dtype=torch.float64).reshape(10, 4)
    m.eval()
    a, b = m(x), m(x)
    assert torch.equal(a, b)
    want = ref.expectation(x.numpy(), m.p.detach().numpy(), fn="hard_tanh", variant="NAH",
                           alpha=1.15, c=0.9)
    np.testing.assert_allclose(a.detach().numpy(), want, rtol=1e-12)
    m.train()
    assert not torch.equal(m(x), m(x))


def test_training_noise_is_per_element_and_p_learns():
    """Regression (neuralmonkey): one scalar noise sample shared by the batch; p never learned."""
    m = noisyact.NoisyHardTanh("NAN", c=2.0)
    x = torch.full((1000,), 3.0)
    y = m(x)
    assert y.unique().numel() > 900
    y.sum().backward()
    assert m.p.grad is not None and m.p.grad.abs().item() > 0


def test_two_models_do_not_share_train_state():
    """Regression (deep_gene_annotator): shared module instances leaked train/eval state."""
    a = noisyact.noisify(nn.Sequential(nn.Tanh())).model
    b = noisyact.noisify(nn.Sequential(nn.Tanh())).model
    a.eval()
    assert b[0].training and not a[0].training


def test_regression_nanis_hard_sigmoid_is_identity_in_linear_regime():
    """Regression (noisy_units NHardSigmoidSat): '+' for '*' gave 1 + h(x); TF used threshold 1.001."""
    m = noisyact.NoisyHardSigmoid("NANIS", c=0.25)
    x = torch.linspace(-1.99, 1.99, 500)  # inside |x| < 2: no noise, output exactly h(x)
    torch.testing.assert_close(m(x), torch.clamp(0.25 * x + 0.5, 0, 1), rtol=0, atol=0)
    big = torch.full((1000,), 2.5)
    assert m(big).std() > 0  # noise where saturated


def test_regression_nan_training_noise_is_not_zero():
    """Regression (TF port NTanhP): with normal noise the training noise was identically zero."""
    m = noisyact.NoisyHardTanh("NAN", c=1.0)
    torch.manual_seed(0)
    y = m(torch.full((1000,), 4.0))
    assert y.std() > 1e-3


def test_regression_eval_keeps_half_normal_mean_and_alpha_mix():
    """Regression (deep_gene_annotator): eval returned h(x), dropping α-mix and d·σ·√(2/π)."""
    m = noisyact.NoisyHardTanh("NAH", alpha=1.2, c=2.0).eval()
    x = torch.tensor([3.0])
    s = ref.sigma(3.0, m.p.item(), 2.0, "hard_tanh")
    want = 1.2 * 1.0 + (1 - 1.2) * 3.0 + 1.0 * s * math.sqrt(2 / math.pi)  # d = +1 for α > 1
    assert m(x).item() == pytest.approx(want, rel=1e-6)
    assert m(x).item() != pytest.approx(1.0)


def test_regression_exact_half_normal_mean():
    assert pytest.approx(0.7978845608, abs=1e-10) == noisyact.functional.HALF_NORMAL_MEAN


def test_regression_nanil_not_softplus_form():
    """Regression (noisy_units N*PInp): softplus σ put noise in the linear regime (σ = 0.69c)."""
    m = noisyact.NoisyHardTanh("NANIL", c=0.5)
    x = torch.linspace(-0.99, 0.99, 1000)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)


def test_set_c_validates():
    m = noisyact.NoisyHardTanh()
    m.set_c(0.0)
    assert float(m.c) == 0.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="c must"):
            m.set_c(bad)
    with pytest.raises(ValueError, match="num_parameters"):
        noisyact.NoisyHardTanh(num_parameters=0)
    with pytest.raises(ValueError, match="alpha"):
        noisyact.NoisyHardTanh(alpha=float("nan"))
    with pytest.raises(ValueError, match="NANIS"):
        noisyact.NoisyTanh("NANIS")


def test_wrong_p_shape_is_a_clear_error():
    m = noisyact.NoisyHardTanh(num_parameters=8)
    with pytest.raises(ValueError, match="p has shape"):
        m(torch.randn(4, 7))


def test_generic_pair():
    fn = noisyact.make_saturating("softsign", nn.functional.softsign, lambda x: x)
    m = noisyact.NoisyActivation(fn, "NAN", alpha=1.0, c=1.0)
    x = torch.randn(100) * 4
    m.eval()
    torch.testing.assert_close(m(x), nn.functional.softsign(x))  # α = 1, E[ξ] = 0


@pytest.mark.parametrize("cls", [noisyact.NoisyHardTanh, noisyact.NoisyHardSigmoid])
@pytest.mark.parametrize("variant", ["NAN", "NAH", "NANI", "NANIL", "NANIS"])
def test_torchscript_and_trace_in_eval(cls, variant):
    m = cls(variant, num_parameters=6, dim=-1).eval()
    x = torch.randn(3, 6) * 3
    scripted = torch.jit.script(m)
    traced = torch.jit.trace(m, x)
    torch.testing.assert_close(scripted(x), m(x), rtol=0, atol=0)
    torch.testing.assert_close(traced(x), m(x), rtol=0, atol=0)


@pytest.mark.slow
def test_onnx_export_in_eval_is_deterministic(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    m = nn.Sequential(nn.Linear(6, 6), noisyact.NoisyHardSigmoid("NAH", num_parameters=6,
                                                                  dim=-1)).eval()
    x = torch.randn(5, 6) * 3
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (x,), str(path), input_names=["x"], output_names=["y"])
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert not any("Random" in op for op in ops), ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y1 = sess.run(None, {"x": x.numpy()})[0]
    y2 = sess.run(None, {"x": x.numpy()})[0]
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(y1, m(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_registry():
    assert "nah_hard_sigmoid" in noisyact.list_act_layers()
    m = noisyact.create_act_layer("nan_hard_tanh", c=0.2, inplace=True)
    assert isinstance(m, noisyact.NoisyHardTanh) and m.variant == "NAN"
    assert noisyact.get_act_layer("noisy_tanh") is noisyact.NoisyTanh
    with pytest.raises(ValueError, match="unknown noisy activation"):
        noisyact.get_act_layer("relu")


def test_noisify_replaces_and_reports():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Sequential(nn.Hardtanh(), nn.Sigmoid()),
                        nn.Hardtanh(0, 6))
    w = net[0].weight.detach().clone()
    report = noisyact.noisify(net, "NAN", c=0.3)
    assert isinstance(net[1], noisyact.NoisyHardTanh) and float(net[1].c) == pytest.approx(0.3)
    assert isinstance(net[2][0], noisyact.NoisyHardTanh)
    assert isinstance(net[2][1], noisyact.NoisyHardSigmoid)
    assert isinstance(net[3], nn.Hardtanh)  # not the paper's hard-tanh: skipped, and said so
    assert [r[0] for r in report.replaced] == ["1", "2.0", "2.1"]
    assert report.skipped and report.skipped[0][0] == "3"
    assert "Tanh -> NoisyHardTanh" in str(report)
    assert torch.equal(net[0].weight, w)
    soft = noisyact.noisify(nn.Sequential(nn.Tanh()), soft=True).model
    assert isinstance(soft[0], noisyact.NoisyTanh)
    root = noisyact.noisify(nn.Sigmoid())
    assert isinstance(root.model, noisyact.NoisyHardSigmoid)


def test_param_groups_exclude_p_from_weight_decay():
    net = nn.Sequential(nn.Linear(4, 8), noisyact.NoisyHardTanh(num_parameters=8), nn.Tanh())
    groups = noisyact.param_groups(net, weight_decay=0.1, lr=0.01)
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["params"] == [net[1].p]
    assert len(groups[0]["params"]) == 2 and groups[0]["lr"] == 0.01
    torch.optim.AdamW(groups)


def test_schedules():
    s = noisyact.InverseSqrt(c0=30.0, every=200, floor=0.5)
    assert s(0) == 30.0 and s(199) == 30.0 and s(200) == pytest.approx(30 / math.sqrt(2))
    assert s(200 * 3599) == pytest.approx(0.5) and s(10**9) == 0.5
    assert noisyact.Linear(1.0, 0.0, 10)(5) == pytest.approx(0.5)
    assert noisyact.Linear(1.0, 0.0, 10)(50) == 0.0
    assert noisyact.Exponential(1.0, 0.5, every=2)(4) == 0.25
    assert noisyact.Cosine(1.0, 0.0, 10)(5) == pytest.approx(0.5)
    assert noisyact.Constant(0.3)(123) == 0.3
    with pytest.raises(ValueError, match="every"):
        noisyact.InverseSqrt(c0=1.0, every=0)
    with pytest.raises(ValueError, match="c0"):
        noisyact.InverseSqrt(c0=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        noisyact.Exponential(1.0, 1.5)


def test_annealer_sets_every_module_and_resumes():
    net = nn.Sequential(noisyact.NoisyHardTanh(), nn.Linear(2, 2), noisyact.NoisyHardSigmoid())
    ann = noisyact.NoiseAnnealer(net, noisyact.InverseSqrt(c0=30.0, every=2, floor=0.5))
    assert float(net[0].c) == 30.0 and float(net[2].c) == 30.0
    for _ in range(4):
        ann.step()
    assert float(net[2].c) == pytest.approx(30 / math.sqrt(3))
    state = ann.state_dict()
    net2 = nn.Sequential(noisyact.NoisyHardTanh(), nn.Linear(2, 2), noisyact.NoisyHardSigmoid())
    ann2 = noisyact.NoiseAnnealer(net2, noisyact.InverseSqrt(c0=30.0, every=2, floor=0.5))
    ann2.load_state_dict(state)
    assert float(net2[0].c) == pytest.approx(float(net[0].c))
    with pytest.raises(ValueError, match="no noisy module"):
        anneal.NoiseAnnealer(nn.Linear(2, 2), noisyact.Constant(1.0))


def test_half_module_keeps_c_exact():
    m = noisyact.NoisyHardSigmoid(c=0.15, num_parameters=4, dim=-1).half()
    assert m.c.dtype == torch.float64 and float(m.c) == 0.15
    assert m.p.dtype == torch.float16
    y = m(torch.randn(3, 4, dtype=torch.float16) * 3)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


@pytest.mark.parametrize("cls", [noisyact.NoisyHardTanh, noisyact.NoisyHardSigmoid])
@pytest.mark.parametrize("variant", ["NAH", "NANI"])
def test_integer_input_raises_in_train_and_eval(cls, variant):
    """Eval used to truncate integer inputs silently (NoisyHardSigmoid().eval()(arange) → ints)."""
    m = cls(variant)
    x = torch.arange(-3, 4)
    for mode in (True, False):
        m.train(mode)
        with pytest.raises(ValueError, match=r"x must be a floating-point Tensor, got torch.int64"):
            m(x)
    with pytest.raises(torch.jit.Error, match="floating-point"):
        torch.jit.script(m.eval())(x)


def test_inverse_sqrt_default_floor_is_the_papers_half():
    s = noisyact.InverseSqrt(c0=30.0)
    assert s(0) == 30.0 and s(200 * 10**5) == 0.5  # 30/√(10⁵+1) ≈ 0.095 without the floor
    assert noisyact.InverseSqrt(c0=30.0, floor=0.0)(200 * 10**5) < 0.1


def test_annealer_skips_fixed_sigma_variants_by_default():
    net = nn.Sequential(noisyact.NoisyHardTanh("NAN"), noisyact.NoisyHardSigmoid("NANIL"),
                        noisyact.NoisyHardTanh("NANI"), noisyact.NoisyHardSigmoid("NANIS"))
    ann = noisyact.NoiseAnnealer(net, noisyact.Constant(3.0))
    assert ann.modules == [net[0], net[1]]
    assert [float(m.c) for m in net] == [3.0, 3.0, 0.05, 0.25]  # NANI/NANIS keep their σ
    noisyact.NoiseAnnealer(net, noisyact.Constant(2.0), variants=["nani"])
    assert [float(m.c) for m in net] == [3.0, 3.0, 2.0, 0.25]
    noisyact.NoiseAnnealer(net, noisyact.Constant(1.0), variants=None)
    assert [float(m.c) for m in net] == [1.0] * 4
    with pytest.raises(ValueError, match=r"no noisy module to anneal \(1 module\(s\) of variant "
                                         r"NANI skipped: pass variants="):
        noisyact.NoiseAnnealer(noisyact.NoisyHardTanh("NANI"), noisyact.Constant(1.0))
    with pytest.raises(ValueError, match="variant must be one of"):
        noisyact.NoiseAnnealer(net, noisyact.Constant(1.0), variants=["relu"])


@pytest.mark.parametrize("cls,lo,hi", [(noisyact.NoisyHardTanh, -1.0, 1.0),
                                       (noisyact.NoisyHardSigmoid, 0.0, 1.0),
                                       (noisyact.NoisyTanh, -1.0, 1.0),
                                       (noisyact.NoisySigmoid, 0.0, 1.0)])
@pytest.mark.parametrize("variant", ["NAN", "NAH"])
def test_clip_output_keeps_the_range_of_h(cls, lo, hi, variant):
    """α > 1 is unbounded by design (−1.35 at x = 100 for the hard-sigmoid); clip_output=True
    clips to the range of h in training and eval, and eval stays scriptable."""
    x = torch.linspace(-100, 100, 201)
    plain = cls(variant, alpha=1.1)
    clipped = cls(variant, alpha=1.1, clip_output=True)
    clipped.load_state_dict(plain.state_dict())
    for mode in (True, False):
        plain.train(mode), clipped.train(mode)
        y0, y1 = plain(x), clipped(x)
        assert y0.min() < lo - 0.5 or y0.max() > hi + 0.5
        assert y1.min() >= lo and y1.max() <= hi
    torch.testing.assert_close(y1, y0.clamp(lo, hi))
    assert "clip_output=True" in repr(clipped)
    if cls in (noisyact.NoisyHardTanh, noisyact.NoisyHardSigmoid):
        torch.testing.assert_close(torch.jit.script(clipped)(x), y1, rtol=0, atol=0)
    with pytest.raises(ValueError, match="clip_output needs the range of h"):
        noisyact.NoisyActivation(noisyact.make_saturating("softsign", nn.functional.softsign,
                                                          lambda t: t), clip_output=True)


def test_noisify_follows_dtype_and_device_of_the_replaced_module():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Sequential(nn.Sigmoid()),
                        nn.LSTM(8, 3)).double()
    noisyact.noisify(net, "NAH")
    assert net[1].p.dtype == torch.float64 and net[2][0].p.dtype == torch.float64
    assert net[3].noise_l0.gate.p.dtype == torch.float64
    net[:3](torch.randn(2, 4, dtype=torch.float64)).sum().backward()  # no dtype clash
    meta = nn.Sequential(nn.Linear(4, 8, device="meta"), nn.Tanh())
    noisyact.noisify(meta, "NAN", soft=True)
    assert meta[1].p.device.type == "meta"
    explicit = nn.Sequential(nn.Linear(4, 8).double(), nn.Tanh())
    noisyact.noisify(explicit, dtype=torch.float32)
    assert explicit[1].p.dtype == torch.float32


def test_noisify_reports_elman_rnn_as_skipped():
    net = nn.ModuleDict({"rnn": nn.RNN(3, 4), "cell": nn.RNNCell(3, 4), "act": nn.Tanh()})
    report = noisyact.noisify(net)
    assert {name for name, _ in report.skipped} == {"rnn", "cell"}
    assert all("no noisy counterpart" in why for _, why in report.skipped)
    assert "skipped rnn: RNN (Elman RNN) has no noisy counterpart" in str(report)
    assert type(net["rnn"]) is nn.RNN


@pytest.mark.parametrize("soft", [False, True])
def test_noisify_per_feature_p(soft):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3), nn.Sigmoid())
    report = noisyact.noisify(net, "NAH", soft=soft, per_feature=True)
    assert len(report.replaced) == 2 and "num_parameters=lazy" in repr(net)
    net(torch.randn(5, 4))  # sizes p, as nn.LazyLinear
    hard = (noisyact.NoisyHardTanh, noisyact.NoisyHardSigmoid)
    assert type(net[1]) is (noisyact.NoisyTanh if soft else hard[0])
    assert net[1].p.shape == (8,) and net[3].p.shape == (3,) and net[1].num_parameters == 8
    groups = noisyact.param_groups(net, weight_decay=0.1)
    assert groups[1]["params"] == [net[1].p, net[3].p]
    torch.optim.AdamW(groups).step()
    fresh = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3), nn.Sigmoid())
    noisyact.noisify(fresh, "NAH", soft=soft, per_feature=True)
    fresh.load_state_dict(net.state_dict())  # lazy modules load a sized p
    assert torch.equal(fresh[1].p, net[1].p)
    seq = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    noisyact.noisify(seq, per_feature=True, dim=-1)
    seq(torch.randn(2, 7, 4))
    assert seq[1].p.shape == (6,)
    with pytest.raises(ValueError, match="num_parameters"):
        noisyact.noisify(nn.Tanh(), per_feature=True, num_parameters=3)


class _FunctionalGates(nn.Module):
    """Gates written as function calls: invisible to the module walk of noisify."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 18)
        self.head = nn.Sequential(nn.Linear(3, 3), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c, d, e, f = self.lin(x).chunk(6, -1)
        y = (torch.sigmoid(a) * torch.tanh(b) + nn.functional.sigmoid(c) * nn.functional.tanh(d)
             + e.sigmoid() * f.tanh())
        return self.head(y)


def test_noisify_traced_converts_functional_calls():
    torch.manual_seed(0)
    model = _FunctionalGates().double()
    x = torch.randn(64, 4, dtype=torch.float64) * 4
    plain = noisyact.noisify(_copy(model), "NAH")
    assert [r[0] for r in plain.replaced] == ["head.1"]  # the functional calls stay
    assert not isinstance(plain.model, torch.fx.GraphModule)
    report = noisyact.noisify(model, "NAH", trace=True)
    gm = report.model
    assert isinstance(gm, torch.fx.GraphModule)
    new = [r for r in report.replaced if r[0].startswith("noisy_")]
    assert len(new) == 6
    assert {r[2] for r in new} == {"NoisyHardSigmoid", "NoisyHardTanh"}
    acts = [m for m in gm.modules() if isinstance(m, noisyact.NoisyActivation)]
    assert len(acts) == 7 and all(a.p.dtype == torch.float64 for a in acts)
    assert len(list(noisyact.noise_parameters(gm))) == 7
    groups = noisyact.param_groups(gm, weight_decay=0.1)
    assert len(groups[1]["params"]) == 7 and groups[1]["weight_decay"] == 0.0
    gm.train()
    assert not torch.equal(gm(x), gm(x))  # noisy in training
    gm.eval()
    a, b, c, d, e, f = model.lin(x).chunk(6, -1)  # gm shares model's submodules
    units = {n: m for n, m in gm.named_children() if n.startswith("noisy_")}
    expect = (units["noisy_sigmoid"](a) * units["noisy_tanh"](b)
              + units["noisy_sigmoid_1"](c) * units["noisy_tanh_1"](d)
              + units["noisy_sigmoid_2"](e) * units["noisy_tanh_2"](f))
    torch.testing.assert_close(gm(x), model.head(expect))
    # the eval value of each unit is the hard-function expectation (Eq. 13)
    ref = noisyact.functional.noisy_hard_tanh(b, units["noisy_tanh"].p, variant="NAH",
                                              training=False)
    torch.testing.assert_close(units["noisy_tanh"](b), ref)
    gm.train()
    gm(x).sum().backward()
    assert all(a.p.grad is not None for a in acts)


def _copy(m):
    import copy
    return copy.deepcopy(m)
