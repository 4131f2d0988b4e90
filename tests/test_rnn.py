"""Noisy LSTM/GRU: wiring (= nn.LSTM/nn.GRU with soft units), fused = reference loop, API."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import noisyact
from noisyact import functional as F
from noisyact.noise import draw_keys, noise_block
from noisyact.rnn import NoisyGRU, NoisyGRUCell, NoisyLSTM, NoisyLSTMCell

PAIRS = [(NoisyLSTM, nn.LSTM), (NoisyGRU, nn.GRU)]


def _out(y):
    return y[0]


@pytest.mark.parametrize("mode,cls", [("eager", NoisyLSTM), ("eager", NoisyGRU),
                                      ("compile", NoisyLSTM)])
def test_packed_gradients_equal_per_sequence_gradients(mode, cls):
    """The masked backward: with deterministic hard units, the gradients of a packed batch are
    those of each sequence run alone (input gradients) and their sum (weight gradients)."""
    torch.manual_seed(0)
    m = cls(3, 4, num_layers=2, bidirectional=True, variant="hard")
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(5, 3, 3, requires_grad=True)
    noisyact.set_fused_mode(mode)
    out, hidden = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    padded, _ = pad_packed_sequence(out)
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    gy, gs = torch.randn_like(padded), [torch.randn_like(s) for s in states]
    # final states in the loss: their gradient must pass the padding back to each last step
    loss = (padded * gy).sum() + sum((s * g).sum() for s, g in zip(states, gs, strict=True))
    loss.backward()
    got = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    noisyact.set_fused_mode("eager")
    m.zero_grad()
    for b in range(3):
        n = int(lengths[b])
        xb = x[:n, b:b + 1].detach().requires_grad_()
        y, hid = m(xb)
        hid = list(hid) if isinstance(hid, tuple) else [hid]
        loss = (y * gy[:n, b:b + 1]).sum() + sum((s * g[:, b:b + 1]).sum()
                                                 for s, g in zip(hid, gs, strict=True))
        loss.backward()
        torch.testing.assert_close(x.grad[:n, b:b + 1], xb.grad)
        assert (x.grad[n:, b] == 0).all()
    assert got.keys() == {k for k, p in m.named_parameters() if p.grad is not None}
    for k, p in m.named_parameters():
        if k in got:
            torch.testing.assert_close(got[k], p.grad, msg=k)


@pytest.mark.parametrize("cls,tcls", PAIRS)
@pytest.mark.parametrize("batch_first,bidirectional", [(False, False), (True, True)])
def test_soft_units_equal_torch(cls, tcls, batch_first, bidirectional):
    """With the exact soft functions the layer is nn.LSTM/nn.GRU: proves the wiring."""
    torch.manual_seed(0)
    ref = tcls(5, 7, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
    ours = cls(5, 7, num_layers=2, batch_first=batch_first, bidirectional=bidirectional,
               variant="soft")
    assert str(ours.load_state_dict(ref.state_dict())) == "<All keys matched successfully>"
    x = torch.randn(3, 4, 5, requires_grad=True)
    a, b = ref(x), ours(x)
    torch.testing.assert_close(b[0], a[0])
    torch.testing.assert_close(b[1], a[1])
    a[0].sum().backward()
    g = x.grad.clone()
    x.grad = None
    b[0].sum().backward()
    torch.testing.assert_close(x.grad, g)


def _reference_lstm_layer(x, w_ih, w_hh, b, p, noise, variant, alpha_g, alpha_t, c, **extra):
    """A hand-written loop over noisyact.functional with given noise (T, B, 5H)."""
    H = w_hh.shape[1]
    h = x.new_zeros(x.shape[1], H)
    cell = x.new_zeros(x.shape[1], H)
    outs = []
    kw = {"variant": variant, "training": True, "dim": -1, "c": c, **extra}
    for t in range(x.shape[0]):
        pre = x[t] @ w_ih.T + h @ w_hh.T + b
        i, f, g, o = pre.chunk(4, 1)
        n = noise[t]
        gates = F.noisy_hard_sigmoid(torch.cat([i, f, o], 1), p[0], alpha=alpha_g,
                                     noise=n[:, :3 * H], **kw)
        i, f, o = gates.chunk(3, 1)
        cell = f * cell + i * F.noisy_hard_tanh(g, p[1], alpha=alpha_t, noise=n[:, 3 * H:4 * H],
                                                **kw)
        h = o * F.noisy_hard_tanh(cell, p[2], alpha=alpha_t, noise=n[:, 4 * H:], **kw)
        outs.append(h)
    return torch.stack(outs)


def _reference_gru_layer(x, w_ih, w_hh, b_ih, b_hh, p, noise, variant, alpha_g, alpha_t, c, **extra):
    H = w_hh.shape[1]
    h = x.new_zeros(x.shape[1], H)
    outs = []
    kw = {"variant": variant, "training": True, "dim": -1, "c": c, **extra}
    for t in range(x.shape[0]):
        gi = x[t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        ir, iz, in_ = gi.chunk(3, 1)
        hr, hz, hn = gh.chunk(3, 1)
        r, z = F.noisy_hard_sigmoid(torch.cat([ir + hr, iz + hz], 1), p[0], alpha=alpha_g,
                                    noise=noise[t][:, :2 * H], **kw).chunk(2, 1)
        n = F.noisy_hard_tanh(in_ + r * hn, p[1], alpha=alpha_t, noise=noise[t][:, 2 * H:], **kw)
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs)


def assert_layer_equals_reference(m, x, gy, y, noise, kind, variant, c):
    """Layer 0 of ``m`` (output ``y`` for input ``x``, backward of ``gy`` done) against autograd
    through the equations with the same ξ (``noise``): outputs and every gradient."""
    acts = m.noise_l0
    w_ih = m.weight_ih_l0.detach().clone().requires_grad_()
    w_hh = m.weight_hh_l0.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    if kind == "LSTM":
        ps = [a.p.detach().clone().requires_grad_() for a in (acts.gate, acts.cand, acts.cell)]
        b = (m.bias_ih_l0 + m.bias_hh_l0).detach()
        y2 = _reference_lstm_layer(x2, w_ih, w_hh, b, ps, noise, variant, acts.gate.alpha,
                                   acts.cand.alpha, c)
    else:
        ps = [a.p.detach().clone().requires_grad_() for a in (acts.gate, acts.cand)]
        y2 = _reference_gru_layer(x2, w_ih, w_hh, m.bias_ih_l0.detach(), m.bias_hh_l0.detach(),
                                  ps, noise, variant, acts.gate.alpha, acts.cand.alpha, c)
    y2.backward(gy)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(m.weight_hh_l0.grad, w_hh.grad)
    torch.testing.assert_close(m.weight_ih_l0.grad, w_ih.grad)
    got_p = [acts.gate.p.grad, acts.cand.p.grad] + ([acts.cell.p.grad] if kind == "LSTM" else [])
    for a, b_ in zip(got_p, ps, strict=True):
        torch.testing.assert_close(a, b_.grad)


def _layer_noise(source, T, B, units, seed):
    """The ξ a fused layer draws from ``Generator().manual_seed(seed)``: counter noise of the
    whole sequence from one key (source "kernel") or torch.randn for all steps ("torch")."""
    gen = torch.Generator().manual_seed(seed)
    if source == "torch":
        return torch.randn(T, B, units, dtype=torch.float64, generator=gen)
    key = draw_keys(1, gen, torch.device("cpu"))[0]
    return noise_block(torch.empty(T, B, units), key).double()


@pytest.mark.parametrize(
    "mode,variant,kind,source",
    [("eager", v, k, "kernel") for v in ("NAN", "NAH", "NANIL") for k in ("LSTM", "GRU")]
    + [("eager", "NAH", "LSTM", "torch"), ("eager", "NAN", "GRU", "torch")]
    + [("compile", "NAH", "LSTM", "kernel"), ("compile", "NANIL", "GRU", "kernel")]
    + [("eager", "NANIL-authors", k, "kernel") for k in ("LSTM", "GRU")]
    # noise source "torch": the compiled float64 counter noise differs from the test's eager
    # one by float32 rounding (2.4e-7), which this variant's σξ = O(1) would show
    + [pytest.param("compile", "NANIL-authors", "LSTM", "torch", marks=pytest.mark.compiled_run)],
)
def test_fused_layer_equals_reference_loop(mode, variant, kind, source):
    """Forward and hand-written backward of the fused layer = autograd through the equations."""
    noisyact.set_fused_mode(mode)
    noisyact.set_noise_source(source)
    torch.manual_seed(0)
    T, B, I, H = 6, 3, 4, 5
    cls = NoisyLSTM if kind == "LSTM" else NoisyGRU
    m = cls(I, H, variant=variant, gate_c=1.5, unit_c=1.5,
            generator=torch.Generator().manual_seed(9)).double()
    x = (torch.randn(T, B, I, dtype=torch.float64) * 3).requires_grad_()
    y = m(x)[0]
    gy = torch.randn_like(y)
    y.backward(gy)
    noise = _layer_noise(source, T, B, (5 if kind == "LSTM" else 3) * H, 9)
    assert_layer_equals_reference(m, x, gy, y, noise, kind, variant, 1.5)


@pytest.mark.parametrize("cls", [NoisyLSTM, NoisyGRU])
@pytest.mark.parametrize("variant", ["NAH", "hard", "NANIL"])
def test_fused_and_generic_paths_agree_in_eval(cls, variant):
    torch.manual_seed(0)
    m = cls(4, 6, num_layers=2, bidirectional=True, variant=variant).eval()
    x = torch.randn(5, 3, 4) * 2
    a = m(x)
    assert torch.equal(m(x)[0], a[0])  # deterministic
    noisyact.set_fused_mode("off")
    b = m(x)
    torch.testing.assert_close(a[0], b[0])


class _RecordProducts(torch.overrides.TorchFunctionMode):
    """The (left, right) operands of every matrix product called while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.products: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("__matmul__", "matmul", "mm"):
            self.products.append((args[0], args[1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cls,gates", [(NoisyLSTM, 4), (NoisyGRU, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_step_multiplies_by_a_contiguous_transposed_weight(cls, gates, training):
    """The forward step's product h @ W_hhᵀ takes Wᵀ as a contiguous copy, not a transposed
    view: MKL sums a product of one to three rows in another order when its right operand is a
    view, so evaluation with batch 1 and beam search would change in their last bits (and the
    committed results, made with the copy, would no longer reproduce bit for bit)."""
    H = 8
    m = cls(5, H, num_layers=2).train(training)
    noisyact.set_fused_mode("eager")
    with _RecordProducts() as rec, torch.no_grad():
        m(torch.randn(3, 1, 5))
    recurrent = [w for h, w in rec.products if h.shape == (1, H) and w.shape == (H, gates * H)]
    assert len(recurrent) == 2 * 3  # two layers, three steps
    assert all(w.is_contiguous() for w in recurrent)


@pytest.mark.slow
@pytest.mark.parametrize("cls,dtype,tol", [(NoisyLSTM, torch.bfloat16, 3e-2),
                                           (NoisyGRU, torch.float16, 5e-3)])
def test_half_precision_layers_follow_float32(cls, dtype, tol):
    """bf16/fp16 layers (compiled; units computed in float32, states and saved coefficients kept
    in float32 inside a step): outputs and gradients close to the float32 layer with the same
    weights and noise key (run eagerly: the same kernels op by op, so only the half-precision
    ones are compiled here)."""
    torch.manual_seed(0)
    ref = cls(4, 8, num_layers=2, variant="NAH", generator=torch.Generator())
    low = cls(4, 8, num_layers=2, variant="NAH", generator=torch.Generator()).to(dtype)
    low.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 4) * 8  # large enough that units saturate (else p has no gradient)
    outs = []
    for m, xx, mode in ((ref, x, "eager"), (low, x.to(dtype), "compile")):
        noisyact.set_fused_mode(mode)
        m.generator.manual_seed(5)
        xx = xx.clone().requires_grad_()
        y = m(xx)[0]
        y.float().pow(2).sum().backward()
        outs.append((y.float(), xx.grad.float(), m.weight_hh_l0.grad.float(),
                     m.noise_l0.gate.p.grad.float(), m.noise_l0.cand.p.grad.float()))
    for a, b in zip(*outs, strict=True):
        assert a.norm() > 0 and torch.isfinite(b).all()
        assert (a - b).norm() <= tol * a.norm(), ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize("mode,cls", [("eager", NoisyLSTM), ("eager", NoisyGRU), ("compile", NoisyGRU),
                                      pytest.param("compile", NoisyLSTM,
                                                   marks=pytest.mark.compiled_run)])
def test_training_forward_without_grad_equals_forward_with_grad(mode, cls):
    """A training-mode forward that autograd will differentiate also returns each step's backward
    coefficients (another kernel); without grad it does not. Same noise, same outputs."""
    noisyact.set_fused_mode(mode)
    torch.manual_seed(0)
    m = cls(4, 6, num_layers=2, variant="NAH", generator=torch.Generator())
    x = torch.randn(5, 3, 4) * 2
    m.generator.manual_seed(3)
    with torch.no_grad():
        a = m(x)[0]
    m.generator.manual_seed(3)
    b = m(x)[0]
    assert b.requires_grad and not a.requires_grad
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [NoisyLSTM, NoisyGRU])
@pytest.mark.parametrize("path", ["eager", "off"])
def test_packed_sequences(cls, path):
    """Packed input = running each sequence alone (no state leaks through padding)."""
    noisyact.set_fused_mode(path)
    torch.manual_seed(0)
    m = cls(3, 4, num_layers=2, bidirectional=True, variant="NAH").eval()
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(5, 3, 3)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, hidden = m(packed)
    padded, _lens = pad_packed_sequence(out)
    h_n = hidden[0] if isinstance(hidden, tuple) else hidden
    for b in range(3):
        n = int(lengths[b])
        alone, hid = m(x[:n, b:b + 1])
        torch.testing.assert_close(padded[:n, b], alone[:, 0])
        assert (padded[n:, b] == 0).all()
        h_alone = hid[0] if isinstance(hid, tuple) else hid
        torch.testing.assert_close(h_n[:, b], h_alone[:, 0])
    if path == "eager":  # gradients flow through the packed path
        m.train()
        out, _ = m(pack_padded_sequence(x.requires_grad_(), lengths, enforce_sorted=False))
        out.data.sum().backward()
        assert torch.isfinite(x.grad).all() and (x.grad[4, 1] == 0).all()


@pytest.mark.parametrize("cls,tcls", PAIRS)
def test_state_dict_round_trip(cls, tcls):
    ref = tcls(3, 4, num_layers=2)
    ours = cls(3, 4, num_layers=2)
    p_before = ours.noise_l0.gate.p.detach().clone()
    ours.load_state_dict(ref.state_dict())
    assert torch.equal(ours.noise_l0.gate.p, p_before)  # noise parameters kept
    back = tcls(3, 4, num_layers=2)
    back.load_state_dict(ours.torch_state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    extra = set(ours.state_dict()) - set(ref.state_dict())
    assert extra and all(k.startswith("noise_l") for k in extra)


def test_unbatched_initial_state_and_errors():
    m = NoisyLSTM(3, 4, num_layers=2)
    x = torch.randn(5, 3)
    out, (h, _) = m(x)
    assert out.shape == (5, 4) and h.shape == (2, 4)
    out, (h, _c) = m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.ones(2, 2, 4)))
    assert out.shape == (5, 2, 4)
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="h_0 has shape"):
        m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"2-D .*or 3-D"):
        m(torch.randn(3))
    with pytest.raises(ValueError, match="proj_size"):
        NoisyLSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="gate_variant"):
        NoisyLSTM(3, 4, gate_variant="relu")
    with pytest.raises(ValueError, match="sequence length 0"):
        NoisyGRU(3, 4)(torch.randn(0, 2, 3))


def test_dropout_between_layers_and_eval_determinism():
    m = NoisyGRU(3, 8, num_layers=2, dropout=0.5, variant="hard")
    x = torch.randn(4, 2, 3)
    torch.manual_seed(0)
    a = m(x)[0]
    torch.manual_seed(1)
    b = m(x)[0]
    assert not torch.equal(a, b)  # "hard" has no noise: the difference is the dropout
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])


@pytest.mark.parametrize("cell_cls,tcls", [(NoisyLSTMCell, nn.LSTMCell), (NoisyGRUCell, nn.GRUCell)])
def test_cells(cell_cls, tcls):
    ref = tcls(3, 4)
    ours = cell_cls(3, 4, variant="soft")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3)
    torch.testing.assert_close(_out(ours(x)) if isinstance(ours(x), tuple) else ours(x),
                               _out(ref(x)) if isinstance(ref(x), tuple) else ref(x))
    noisy = cell_cls(3, 4, variant="NAH")
    y = noisy(x[0])  # unbatched
    assert (y[0] if isinstance(y, tuple) else y).shape == (4,)
    with pytest.raises(ValueError, match="input_size=3"):
        noisy(torch.randn(2, 5))


def test_noisify_converts_recurrent_layers_keeping_weights():
    net = nn.ModuleDict({"rnn": nn.LSTM(3, 4, batch_first=True), "gru": nn.GRU(4, 4),
                         "head": nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())})
    w = net["rnn"].weight_hh_l0.detach().clone()
    report = noisyact.noisify(net, "NAN", c=0.2)
    assert isinstance(net["rnn"], NoisyLSTM) and net["rnn"].batch_first
    assert isinstance(net["gru"], NoisyGRU)
    assert torch.equal(net["rnn"].weight_hh_l0, w)
    assert float(net["rnn"].noise_l0.gate.c) == pytest.approx(0.2)
    assert {r[0] for r in report.replaced} == {"rnn", "gru", "head.1"}
    params = list(noisyact.noise_parameters(net))
    assert len(params) == 3 + 2 + 1  # gate/cand/cell p, gate/cand p, head p


def test_annealer_reaches_recurrent_units():
    m = NoisyLSTM(3, 4, num_layers=2)
    ann = noisyact.NoiseAnnealer(m, noisyact.Constant(0.0))
    assert len(ann.modules) == 6
    assert all(float(a.c) == 0.0 for a in ann.modules)


def test_inside_a_compiled_model():
    """torch.compile of a model holding a NoisyLSTM runs the fused recurrence (no unrolling)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), NoisyLSTM(4, 5, variant="NAH"))
    compiled = torch.compile(model)
    x = torch.randn(6, 2, 3)
    model.eval()
    torch.testing.assert_close(compiled(x)[0], model(x)[0])
    model.train()
    compiled(x)[0].sum().backward()
    assert model[1].noise_l0.gate.p.grad is not None


@pytest.mark.slow
def test_compiled_kernels_survive_train_eval_and_batches_of_one(recwarn):
    """Regression: training, eval (no noise tensor) and one-sentence decoding used to pile up
    recompiles of one compiled kernel until Dynamo's limit, which switched every fused kernel of
    the process to eager mode (a silent slowdown)."""
    noisyact.set_fused_mode("compile")
    torch.manual_seed(0)
    with torch._dynamo.config.patch(recompile_limit=2):
        gru = noisyact.NoisyGRU(3, 4, variant="NAH")
        for batch in (5, 1, 3):
            gru.train()
            out, _ = gru(torch.randn(2, batch, 3, requires_grad=True))
            out.sum().backward()
            gru.eval()
            with torch.no_grad():
                gru(torch.randn(2, batch, 3))
    assert noisyact.fused_mode() == "compile"
    assert not [w for w in recwarn if "eagerly" in str(w.message)]


@pytest.mark.parametrize("cls,ref", PAIRS)
def test_dtype_mismatch_errors_like_torch(cls, ref):
    """float64/int input into float32 weights: nn.LSTM's ValueError and message; a float64
    state with float32 input: a RuntimeError naming both dtypes (was accepted silently)."""
    m, r = cls(3, 4), ref(3, 4)
    for x in (torch.randn(2, 1, 3, dtype=torch.float64), torch.arange(6).reshape(2, 1, 3)):
        with pytest.raises(ValueError) as theirs:
            r(x)
        with pytest.raises(ValueError) as ours:
            m(x)
        assert str(ours.value) == str(theirs.value)
    x = torch.randn(2, 1, 3)
    h64, h32 = torch.zeros(1, 1, 4, dtype=torch.float64), torch.zeros(1, 1, 4)
    states = [(h64, h32), (h32, h64)] if cls is NoisyLSTM else [h64]
    for hx in states:
        with pytest.raises(RuntimeError):
            r(x, hx)
        with pytest.raises(RuntimeError, match=r"dtype \(torch.float64\) does not match input "
                                               r"dtype \(torch.float32\)"):
            m(x, hx)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as nn.LSTM: no check under autocast
        assert m(x)[0].dtype == torch.bfloat16


@pytest.mark.parametrize("kind,variant", [("LSTM", "NAH"), ("LSTM", "NAN"), ("GRU", "NAH")])
def test_clip_output_fused_layer_equals_reference(kind, variant):
    """clip_output=True through the fused recurrent kernels: forward, hand-written backward
    (zero where the clip is active) = autograd through the reference ops (fused mode "off"),
    and large inputs no longer overflow (they do without the clip)."""
    noisyact.set_noise_source("torch")
    torch.manual_seed(0)
    T, B, I, H = 6, 3, 4, 5
    cls = NoisyLSTM if kind == "LSTM" else NoisyGRU
    m = cls(I, H, variant=variant, gate_c=1.5, unit_c=1.5, clip_output=True,
            generator=torch.Generator().manual_seed(9)).double()
    assert all(a.clip_output for a in m.noise_l0.children())
    x = (torch.randn(T, B, I, dtype=torch.float64) * 30).requires_grad_()
    y = m(x)[0]
    gy = torch.randn_like(y)
    y.backward(gy)
    acts = m.noise_l0
    noise = _layer_noise("torch", T, B, (5 if kind == "LSTM" else 3) * H, 9)
    w_ih = m.weight_ih_l0.detach().clone().requires_grad_()
    w_hh = m.weight_hh_l0.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    noisyact.set_fused_mode("off")
    units = (acts.gate, acts.cand, acts.cell) if kind == "LSTM" else (acts.gate, acts.cand)
    ps = [a.p.detach().clone().requires_grad_() for a in units]
    if kind == "LSTM":
        b = (m.bias_ih_l0 + m.bias_hh_l0).detach()
        y2 = _reference_lstm_layer(x2, w_ih, w_hh, b, ps, noise, variant, acts.gate.alpha,
                                   acts.cand.alpha, 1.5, clip_output=True)
        y3 = _reference_lstm_layer(x2, w_ih, w_hh, b, ps, noise, variant, acts.gate.alpha,
                                   acts.cand.alpha, 1.5)
    else:
        args = (x2, w_ih, w_hh, m.bias_ih_l0.detach(), m.bias_hh_l0.detach(), ps, noise, variant,
                acts.gate.alpha, acts.cand.alpha, 1.5)
        y2 = _reference_gru_layer(*args, clip_output=True)
        y3 = _reference_gru_layer(*args)
    assert not torch.allclose(y2, y3)  # the clip is active
    y2.backward(gy)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(m.weight_hh_l0.grad, w_hh.grad)
    torch.testing.assert_close(m.weight_ih_l0.grad, w_ih.grad)
    for a, b_ in zip(units, ps, strict=True):
        torch.testing.assert_close(a.p.grad, b_.grad)
    noisyact.set_fused_mode("eager")
    big = torch.randn(50, 4, I, dtype=torch.float64) * 1e30
    with torch.no_grad():
        assert m(big)[0].isfinite().all()
        for a in units:
            a.clip_output = False
        assert not m(big)[0].isfinite().all()


def test_import_does_not_import_dynamo():
    """``import noisyact`` stays cheap: Dynamo (≈ 1.7 s to import) is loaded only by users who
    compile (regression: a ``@torch.compiler.disable`` at class definition imported it)."""
    import subprocess
    import sys

    code = "import sys, noisyact; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_compiled_model_runs_the_recurrence_as_a_graph_break():
    """Under torch.compile the layer's time loop is not unrolled: Dynamo breaks the graph at the
    layer (the Linear before it is one graph, the head after it another), and no captured graph
    grows with the sequence length."""
    import torch._dynamo

    torch.manual_seed(0)
    lstm = NoisyLSTM(4, 5, variant="NAH").eval()
    lin = nn.Linear(3, 4)

    def fn(x):
        return lstm(lin(x))[0].sum(-1)

    sizes = {}
    for T in (3, 12):
        torch._dynamo.reset()
        graphs = []

        def backend(gm, example_inputs, graphs=graphs):
            graphs.append(len(gm.graph.nodes))
            return gm.forward

        x = torch.randn(T, 2, 3)
        torch.testing.assert_close(torch.compile(fn, backend=backend)(x), fn(x))
        assert len(graphs) >= 2  # a graph before the layer and one after: the loop ran outside
        sizes[T] = sum(graphs)
    assert sizes[12] == sizes[3]
