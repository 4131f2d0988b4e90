"""Learning to Execute: the program generator, curricula, packing, split, curriculum loop."""

import random
import statistics
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from noisyact import experiments
from noisyact.experiments import learning_to_execute as lte
from noisyact.experiments import programs as P
from noisyact.training import load_checkpoint, train


def _decode(x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Sample strings back from packed columns (every sample ends with its only '.')."""
    out = []
    for col in range(x.shape[1]):
        text = "".join(P.SYMBOLS[i - 1] for i in x[:, col].tolist())
        out += [s.lstrip() + "." for s in text.split(".") if "@" in s]
    return out


def test_the_original_example_sample():
    prog = P.Program(("g=146040", "for x in range(10):g-=529203"), "(g+953939)", -4192051)
    assert prog.sample == "g=146040#for x in range(10):g-=529203#print((g+953939))@-4192051."
    assert prog.run() == -4192051


def test_programs_run_with_no_builtins_but_range():
    with pytest.raises(NameError):
        P.Program((), "len('ab')", 2).run()


@pytest.mark.parametrize("hard", [(6, 3), (1, 1), (3, 2)])
def test_generated_programs_print_their_target(hard):
    gen = P.ProgramGenerator(lambda: hard, seed=5, verify=False)
    progs = [gen.program() for _ in range(700)]
    assert all(p.run() == p.value for p in progs)  # Python 3 agrees with the generator
    assert all(set(p.sample) <= set(P.SYMBOLS) for p in progs)


def test_sample_statistics_match_the_original():
    for hard, mean, top in (((1, 1), 22, 45), ((6, 3), 67, 130)):
        gen = P.ProgramGenerator(lambda h=hard: h, seed=0)
        lens = [len(gen.program().sample) for _ in range(3000)]
        assert abs(statistics.fmean(lens) - mean) < 3 and max(lens) <= top


def test_constants_have_at_most_length_digits():
    gen = P.ProgramGenerator(lambda: (2, 1), seed=3)
    for _ in range(500):
        p = gen.program()
        # nesting 1: one operation on constants in 1..100 (multipliers and loop counts <= 8)
        nums = [int(t) for t in "".join(c if c.isdigit() else " " for c in p.expr + "".join(
            p.lines)).split()]
        assert nums and max(nums) <= 100


def test_split_hash_is_the_originals():
    # hand-computed from the Lua loop: pairs (a, b), then the odd last byte paired with its index
    def lua(s: str) -> int:
        b, h, i = s.encode(), 1, 1
        while i <= len(b):
            nxt = b[i] if i < len(b) else i
            h = (h * 12345 % 452930459) + b[i - 1] * 67890 + nxt * 13579
            i += 2
        return h % 3
    gen = P.ProgramGenerator(lambda: (4, 2), seed=1)
    samples = [gen.program().sample for _ in range(3000)]
    assert [P.split_of(s) for s in samples] == [lua(s) for s in samples]
    counts = [sum(P.split_of(s) == k for s in samples) for k in range(3)]
    assert min(counts) > 900


def test_splits_are_disjoint_and_targets_are_the_printed_digits():
    sets = {}
    for split in ("train", "test"):
        x, y = P.make_split(split, lambda: (2, 2), 1, 400, 6)
        samples = _decode(x, y)
        assert samples and all(P.split_of(s) == P.SPLITS[split] for s in samples)
        sets[split] = set(samples)
        for col in range(x.shape[1]):  # y is zero up to '@' and the character after it
            for t in range(x.shape[0]):
                if y[t, col] != 0:
                    assert y[t, col] == x[t, col]
        assert ((y != 0).sum() > 0) and (x[y == 0] >= 1).all()
    assert not sets["train"] & sets["test"]


def test_encode_scores_only_the_output():
    x, y = P.encode("a=1;#print((a+2))@3.")
    at = "a=1;#print((a+2))@3.".index("@")
    assert y[: at + 1] == [0] * (at + 1) and y[at + 1:] == [P.VOCAB["3"], P.VOCAB["."]]
    assert x == [P.VOCAB[c] for c in "a=1;#print((a+2))@3."]


def test_pack_rejects_a_sample_longer_than_a_column_and_fills_tails():
    with pytest.raises(ValueError, match="does not fit"):
        P.pack(lambda: "a=1#print(a)@1.", 5, 2)
    x, y = P.pack(lambda: "print(1)@1.", 25, 3)  # 11 chars: two per column, 3 left over
    assert x[22:].eq(1).all() and y[22:].eq(0).all() and x[:22].ne(0).all()


def test_curriculum_strategies():
    rng = random.Random(0)
    cur, tgt = (2, 1), (6, 3)
    assert {P.strategy_hardness("baseline", rng, cur, tgt)() for _ in range(50)} == {tgt}
    assert {P.strategy_hardness("naive", rng, cur, tgt)() for _ in range(50)} == {cur}
    mix = [P.strategy_hardness("mix", rng, cur, tgt)() for _ in range(3000)]
    assert {m[0] for m in mix} == set(range(1, 7)) and {m[1] for m in mix} == {1, 2, 3}
    blend = [P.strategy_hardness("blend", rng, cur, tgt)() for _ in range(5000)]
    frac_not_current = sum(b != cur for b in blend) / len(blend)
    # mix draws (1/5 of calls) equal the current level with probability 1/18
    assert abs(frac_not_current - 0.2 * 17 / 18) < 0.02
    with pytest.raises(ValueError, match="strategy"):
        P.strategy_hardness("random", rng, cur, tgt)
    assert P.strategy_hardness("none", rng, cur, tgt)() == tgt  # the papers' names
    assert {P.strategy_hardness("combined", rng, cur, tgt)() for _ in range(200)} > {cur}


def test_make_harder_order():
    levels, cur = [(1, 1)], (1, 1)
    while (cur := P.make_harder(cur, (6, 3))) is not None:
        levels.append(cur)
    assert levels == [(L, N) for N in (1, 2, 3) for L in range(1, 7)]


@given(st.lists(st.integers(-8, 8).map(lambda k: k / 4), min_size=4, max_size=4),
       st.integers(1, 3))  # quarter steps: exact ties, and differences float32 keeps
@settings(max_examples=40, deadline=None)
def test_accuracy_counts_ties_as_correct(row, target):
    logits = torch.tensor([[row]])
    _nll, correct, counted = lte.masked_counts(logits, torch.tensor([[target]]))
    assert counted == 1 and correct == int(row[target] >= max(row))
    assert lte.masked_counts(logits, torch.tensor([[0]]))[1:] == (0, 0)


def _smoke(**kw):
    return replace(lte.PRESETS["smoke"], **kw)


def test_curriculum_makes_harder_then_decays_lr_then_stops():
    task = lte.ExecuteTask("reference", _smoke(target_length=2, target_nesting=1), 0)
    model = task.build_model()
    task.evaluate = lambda m, split: {"acc": 99.0, "nll": 0.0}  # above 95 %: make harder
    check = task.cfg.check_at
    assert task.level == (1, 1)
    seed = task.train_seed
    task.stored = [0.5]
    with torch.no_grad():
        task.loss(model, task.batch(0, 0, 1))
    rec = task.after_step(model, check)
    assert rec["length"] == 1 and task.level == (2, 1) and task.train_seed == seed + 1
    # the list was cleared, then this check's training accuracy stored
    assert task.stored == [rec["train_acc"] / 100] and task.pos == 0
    task.after_step(model, check + task.cfg.check_every)  # at the target: lr × 0.8
    assert task.level == (2, 1) and task.lr_scale == pytest.approx(0.8)
    assert task.lr_at(0, 0.5) == pytest.approx(0.4)
    task.lr_scale = 0.0021
    task.after_step(model, check + 2 * task.cfg.check_every)
    assert task.finished


def test_curriculum_makes_harder_when_training_accuracy_falls():
    task = lte.ExecuteTask("reference", _smoke(), 0)
    model = task.build_model()
    task.evaluate = lambda m, split: {"acc": 10.0, "nll": 1.0}
    task.stored = [0.9, 0.1, 0.1, 0.1]  # only 4 stored: no decision yet
    with torch.no_grad():
        task.loss(model, task.batch(0, 0, 1))
    task.after_step(model, task.cfg.check_at)
    assert task.level == (1, 1) and len(task.stored) == 5
    with torch.no_grad():
        task.loss(model, task.batch(1, 0, 1))
    task.after_step(model, task.cfg.check_at + task.cfg.check_every)  # 0.9 > current
    assert task.level == (2, 1)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="strategy"):
        lte.ExecuteTask("reference", _smoke(strategy="curriculum"), 0)
    with pytest.raises(ValueError, match="target_nesting"):
        lte.ExecuteTask("reference", _smoke(target_nesting=0), 0)


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    exp = experiments.get("learning-to-execute")
    cfg = _smoke(steps=14, pass_steps=4, check_every=4, check_at=1)
    tc = exp.train_config(cfg, seed=0)
    full = train(exp.make_task("NAH", cfg, 0), tc, tmp_path / "full", progress=False)
    train(exp.make_task("NAH", cfg, 0), tc, tmp_path / "resumed", progress=False, stop_at=10)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 8
    resumed = train(exp.make_task("NAH", cfg, 0), tc, tmp_path / "resumed", progress=False,
                    resume=True)
    full.pop("train_tokens_per_s"), resumed.pop("train_tokens_per_s")
    assert resumed == full
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert lines == (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert any('"test_acc"' in line for line in lines)


def test_passes_stay_aligned_after_the_curriculum_restarts_the_data():
    """Regression: restarting the data at a make-harder check shifted the pass boundaries so
    that later checks fell on a fresh pass with nothing counted (a 0 % training accuracy that
    then triggered the make-harder rule again)."""
    cfg = _smoke(pass_steps=10, check_every=5, check_at=2, steps=40)
    task = lte.ExecuteTask("reference", cfg, 0)
    model = task.build_model()
    verdicts = iter([99.0] + [10.0] * 20)  # make harder at the first check only
    task.evaluate = lambda m, split: {"acc": next(verdicts) if split == "valid" else 0.0,
                                      "nll": 0.0}
    restarts, records = [], []
    for step in range(1, 41):
        task.batch(step - 1, 0, 1)
        # a constant 50 % training accuracy: the "falling" rule never fires (an untrained model's
        # accuracy would make the test depend on the global random state)
        task.correct, task.counted = task.correct + 1, task.counted + 2
        if (rec := task.after_step(model, step)) is not None:
            records.append(rec)
        if task.pos == 0:
            restarts.append(step)
    assert restarts == [2, 10, 20, 30, 40]  # the make-harder check, then every pass_steps
    assert task.level == (2, 1)
    assert all("train_acc" in r for r in records) and len(records) == 8
