"""Learning to Execute data (Zaremba & Sutskever 2014): programs, curricula, encoding, packing.

A Python 3 port of ``data.lua`` / ``utils/operations.lua`` / ``utils/strategies.lua`` of
github.com/wojciechz/learning_to_execute, written from the spec in ``TASKS.md`` §1:

* ``length`` is the number of digits of the constants (not a number of lines, as the noisy
  paper's gloss says), ``nesting`` the number of composed operations;
* every constant, multiplier and loop count calls ``hardness()`` afresh, so under the ``mix`` and
  ``blend`` (= the paper's "combined") strategies the length varies per number while the nesting
  is fixed per program;
* a sample is ``line#line#print(E)@<digits>.``; the net reads it character by character and is
  scored on the characters after ``@`` (teacher forcing);
* samples are written back to back down the columns of a (len, batch) tensor; a sample that does
  not fit goes to the next column and the column's tail keeps the fill values (x = 1, y = 0);
* train / valid / test are disjoint by a hash of the sample string (the original's).

Every program is checked by running it with Python (``exec`` of our own generated code, with no
builtins but ``range`` and a ``print`` that records its argument) against the value the
generator computed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# The 42 symbols of the original (space, #()*+-., digits, :;<=>@, a-j, l, n, o, p, r, s, t, x).
SYMBOLS = " #()*+-.0123456789:;<=>@abcdefghijlnoprstx"
VOCAB = {ch: i + 1 for i, ch in enumerate(SYMBOLS)}  # 0 = "no target"
VOCAB_SIZE = len(SYMBOLS) + 1
STRATEGIES = ("baseline", "naive", "mix", "blend")
ALIASES = {"none": "baseline", "combined": "blend", "mixed": "mix"}  # the papers' names
SPLITS = {"train": 0, "valid": 1, "test": 2}

Hardness = Callable[[], tuple[int, int]]


@dataclass(frozen=True)
class Program:
    """One generated program: its code lines, the printed expression and the printed value."""

    lines: tuple[str, ...]
    expr: str
    value: int

    @property
    def sample(self) -> str:
        """The character string the network reads: ``lines#…print(E)@value.``."""
        return "".join(f"{line}#" for line in self.lines) + f"print({self.expr})@{self.value}."

    def run(self) -> int:
        """The value Python prints for this program (our own generated code only)."""
        printed: list[int] = []
        code = "\n".join((*self.lines, f"print({self.expr})"))
        exec(code, {"__builtins__": {"range": range, "print": printed.append}})
        if len(printed) != 1 or not isinstance(printed[0], int):
            raise AssertionError(f"program printed {printed!r}:\n{code}")
        return printed[0]


class ProgramGenerator:
    """Programs of Zaremba & Sutskever's grammar, drawn with ``hardness()`` and a seeded RNG.

    Args:
        hardness: returns ``(length, nesting)``; called afresh for every number drawn.
        seed: seed of the generator's ``random.Random``.
        verify: run every program with Python and compare with the computed value.
    """

    def __init__(self, hardness: Hardness, seed: int, verify: bool = True) -> None:
        self.hardness = hardness
        self.rng = random.Random(seed)
        self.verify = verify

    def _length(self) -> int:
        return self.hardness()[0]

    def _constant(self) -> tuple[str, int]:
        v = self.rng.randint(1, 10 ** self._length())
        return str(v), v

    def _operands(self, stack: list[tuple[str, int]], k: int) -> list[tuple[str, int]]:
        drawn = [stack.pop() if (i == 0 and stack) else self._constant() for i in range(k)]
        self.rng.shuffle(drawn)  # the nested expression lands in a uniformly random slot
        return drawn

    def _op(self, which: int, stack: list[tuple[str, int]], names: list[str],
            lines: list[str]) -> tuple[str, int]:
        coin = self.rng.random() < 0.5
        if which == 0:  # pair
            (a, va), (b, vb) = self._operands(stack, 2)
            return (f"({a}+{b})", va + vb) if coin else (f"({a}-{b})", va - vb)
        if which == 1:  # smallmul
            ((a, va),) = self._operands(stack, 1)
            m = self.rng.randint(1, 4 * self._length())
            return (f"({a}*{m})", va * m) if coin else (f"({m}*{a})", m * va)
        if which == 2:  # equality
            return self._operands(stack, 1)[0]
        if which == 3:  # vars
            (a, va), (b, vb) = self._operands(stack, 2)
            v = names.pop()
            lines.append(f"{v}={a};")
            return (f"({v}+{b})", va + vb) if coin else (f"({v}-{b})", va - vb)
        if which == 4:  # small_loop
            (a, va), (b, vb) = self._operands(stack, 2)
            v = names.pop()
            n = self.rng.randint(1, 4 * self._length())
            lines.append(f"{v}={a}")
            lines.append(f"for x in range({n}):{v}{'+' if coin else '-'}={b}")
            return v, (va + n * vb) if coin else (va - n * vb)
        # ifstat
        (a, va), (b, vb), (c, vc), (d, vd) = self._operands(stack, 4)
        if coin:
            return f"({c} if {a}>{b} else {d})", vc if va > vb else vd
        return f"({c} if {a}<{b} else {d})", vc if va < vb else vd

    def program(self) -> Program:
        """One program (``compose`` of the original)."""
        names = list("abcdefghij")
        self.rng.shuffle(names)
        stack: list[tuple[str, int]] = []
        lines: list[str] = []
        nesting = self.hardness()[1]
        for _ in range(nesting):
            stack.append(self._op(self.rng.randrange(6), stack, names, lines))
        expr, value = stack.pop()
        prog = Program(tuple(lines), expr, value)
        if self.verify and prog.run() != value:
            raise AssertionError(f"generator computed {value}, Python prints {prog.run()}: "
                                 f"{prog.sample}")
        return prog


def split_of(sample: str) -> int:
    """The original's hash of the sample string, mod 3: 0 train, 1 valid, 2 test."""
    data = sample.encode()
    h = 1
    for i in range(0, len(data), 2):  # i is 0-based here; the Lua loop's index is i + 1
        nxt = data[i + 1] if i + 1 < len(data) else i + 1
        h = (h * 12345 % 452930459) + data[i] * 67890 + nxt * 13579
    return h % 3


def strategy_hardness(strategy: str, rng: random.Random, current: tuple[int, int],
                      target: tuple[int, int]) -> Hardness:
    """``hardness()`` of a curriculum strategy (``strategies.lua``).

    baseline (the papers' "no curriculum", alias ``none``): the target; naive: the current
    level; mix (``mixed``): uniform up to the target in each coordinate; blend (``combined``,
    the noisy paper's choice): mix with probability 1/5, else naive.
    """
    strategy = ALIASES.get(strategy, strategy)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES} (or {sorted(ALIASES)}), "
                         f"got {strategy!r}")

    def mix() -> tuple[int, int]:
        return rng.randint(1, target[0]), rng.randint(1, target[1])

    if strategy == "baseline":
        return lambda: target
    if strategy == "naive":
        return lambda: current
    if strategy == "mix":
        return mix
    return lambda: mix() if rng.random() < 0.2 else current


def make_harder(current: tuple[int, int], target: tuple[int, int]) -> tuple[int, int] | None:
    """The next curriculum level, (1,1)…(L,1),(1,2)…(L,N); None when already at the target."""
    length, nesting = current
    if length < target[0]:
        return length + 1, nesting
    if nesting < target[1]:
        return 1, nesting + 1
    return None


def encode(sample: str) -> tuple[list[int], list[int]]:
    """Input ids of every character and target ids (0 up to and including ``@``)."""
    x = [VOCAB[ch] for ch in sample]
    at = sample.index("@")
    y = [0] * (at + 1) + x[at + 1:]
    return x, y


def pack(stream: Callable[[], str], length: int, columns: int) -> tuple[Tensor, Tensor]:
    """Samples from ``stream`` written back to back down ``columns`` columns of ``length``.

    Returns ``x, y`` of shape ``(length, columns)``; unused tails hold x = 1, y = 0.
    """
    xs: list[list[int]] = [[] for _ in range(columns)]
    ys: list[list[int]] = [[] for _ in range(columns)]
    col = 0
    while col < columns:
        sx, sy = encode(stream())
        if len(sx) > length:
            raise ValueError(f"a sample of {len(sx)} characters does not fit columns of "
                             f"{length}")
        if len(xs[col]) + len(sx) > length:
            col += 1
            if col == columns:
                break
        xs[col] += sx
        ys[col] += sy
    x = torch.ones(columns, length, dtype=torch.long)
    y = torch.zeros(columns, length, dtype=torch.long)
    for c in range(columns):
        x[c, : len(xs[c])] = torch.tensor(xs[c], dtype=torch.long)
        y[c, : len(ys[c])] = torch.tensor(ys[c], dtype=torch.long)
    x, y = x.t().contiguous(), y.t().contiguous()
    return x, y


def make_split(split: str, hardness: Hardness, seed: int, length: int, columns: int,
               verify: bool = True) -> tuple[Tensor, Tensor]:
    """Packed ``(x, y)`` of one split: generated programs whose hash falls in ``split``."""
    gen = ProgramGenerator(hardness, seed, verify)
    want = SPLITS[split]

    def stream() -> str:
        while True:
            s = gen.program().sample
            if split_of(s) == want:
                return s

    return pack(stream, length, columns)


__all__ = ["ALIASES", "SPLITS", "STRATEGIES", "SYMBOLS", "VOCAB", "VOCAB_SIZE", "Program",
           "ProgramGenerator", "encode", "make_harder", "make_split", "pack", "split_of",
           "strategy_hardness"]
