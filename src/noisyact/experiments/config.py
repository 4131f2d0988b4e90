"""Typed settings: a frozen dataclass per experiment, presets made with ``dataclasses.replace``.

Every experiment's settings are a frozen dataclass deriving from :class:`ExperimentConfig`,
which holds what every experiment has (rows, seeds and the optimiser's settings). Each setting
is a typed field with a default; an experiment's base instance is its class with the defaults,
and its presets are ``replace(BASE, steps=30, ...)``. Tasks read attributes (``cfg.steps``).

A config is checked when it is made (``__post_init__``, so every ``replace`` is checked too):

- every field holds its declared type: ``int``, ``float`` (an int given becomes a float),
  ``bool``, ``str``, ``tuple[str, ...]`` (a list given becomes a tuple) or ``X | None``;
- the ranges of :func:`check_settings` hold (sizes >= 1, rates > 0, fractions in (0, 1], ...),
  with the message naming the setting (``batch_size must be >= 1, got 0``).

``key=value`` overrides (``noisyact run EXP --preset P key=value``) are typed from the fields
(:meth:`ExperimentConfig.with_overrides`); an unknown key is refused with the known ones.

:meth:`ExperimentConfig.to_dict` gives the settings as ``config.json`` records them: rows as a
list, and a setting declared with :func:`optional` left out while it is None (such settings
exist in only some presets, e.g. ptb's ``max_train_tokens`` in smoke). Run folders compare these
dicts on ``--resume``, so the dict of a preset is part of the results' format.

A field whose type is itself an :class:`ExperimentConfig` is a group of settings (the ablation's
``ptb``, the settings of its PTB task): its settings are flattened as ``<field>_<setting>``
(``ptb_epochs``) in the dict and in overrides, without its ``rows`` and ``seeds``, which belong to
the outer run.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cache
from typing import Any, TypeVar

C = TypeVar("C", bound="ExperimentConfig")
RUN_LEVEL = ("rows", "seeds")  # settings of the run, not of a group (the ablation's ptb_*)


def optional() -> Any:
    """A setting that only some presets have: None (the default) leaves it out of
    :meth:`ExperimentConfig.to_dict`, as the presets without the setting had no such key."""
    return field(default=None, metadata={"omit_if_none": True})


@dataclass(frozen=True)
class ExperimentConfig:
    """The settings every experiment has; an experiment's config derives from it."""

    rows: tuple[str, ...] = ()  # the rows to run, in this order; empty: all of the experiment's
    seeds: int = 1  # seeds per row (``--seeds`` overrides it)
    batch_size: int = 32  # examples (or text columns) per update
    optimizer: str = "adam"  # "adam", "sgd" or "rmsprop-graves"
    lr: float = 1e-3  # learning rate
    clip: float = 5.0  # max global gradient norm; 0 disables
    log_every: int = 10  # updates between logged training losses

    def __post_init__(self) -> None:
        for name, tp in _hints(type(self)).items():
            object.__setattr__(self, name, _coerce(name, tp, getattr(self, name)))
        check_settings(self)

    # --- settings by name --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The settings as ``config.json`` records them (JSON types; groups flattened)."""
        out: dict[str, Any] = {}
        for f in sorted(fields(self), key=lambda f: f.name in RUN_LEVEL):  # rows, seeds last
            v = getattr(self, f.name)
            if v is None and f.metadata.get("omit_if_none"):
                continue
            if isinstance(v, ExperimentConfig):
                out.update({f"{f.name}_{k}": x for k, x in v.to_dict().items()
                            if k not in RUN_LEVEL})
            else:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def setting_types(cls) -> dict[str, Any]:
        """Every setting's name (groups flattened) and type."""
        return {name: tp for name, (_, _, tp) in _flat(cls).items()}

    def replace_settings(self: C, changes: Mapping[str, Any], *, strict: bool = True) -> C:
        """A copy with settings changed by name (``ptb_epochs`` sets the group's ``epochs``);
        ``strict=False`` ignores names this config does not have."""
        flat = _flat(type(self))
        unknown = [k for k in changes if k not in flat]
        if unknown and strict:
            raise ValueError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(flat))}")
        top: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if key not in flat:
                continue
            outer, inner, _ = flat[key]
            if inner is None:
                top[outer] = value
            else:
                groups.setdefault(outer, {})[inner] = value
        for outer, inner_changes in groups.items():
            try:
                top[outer] = replace(getattr(self, outer), **inner_changes)
            except (ValueError, TypeError) as exc:  # name the setting as the user wrote it
                raise type(exc)(f"{outer}_{exc}") from None
        return replace(self, **top)

    def with_overrides(self: C, overrides: Sequence[str]) -> C:
        """A copy with ``key=value`` strings applied, each value typed from its field
        (``bool``: true/false/1/0; rows: comma-separated; ``X | None``: ``none`` for None)."""
        types_ = self.setting_types()
        changes: dict[str, Any] = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value")
            key, raw = item.split("=", 1)
            if key not in types_:
                raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(types_))}")
            changes[key] = parse_value(key, types_[key], raw)
        return self.replace_settings(changes)

    @classmethod
    def from_dict(cls: type[C], settings: Mapping[str, Any]) -> C:
        """The config of recorded settings (a run folder's ``config.json``): the class defaults
        with every known setting of ``settings`` (a setting the class no longer has is ignored,
        one the folder predates keeps its default)."""
        return cls().replace_settings(settings, strict=False)

    def loop_settings(self) -> dict[str, Any]:
        """The settings of the training loop (:class:`~noisyact.training.TrainConfig`) this
        config has (``steps``, ``lr``, ``clip``, ...; not the seed)."""
        from ..training.trainer import TrainConfig

        names = {f.name for f in fields(TrainConfig)} - {"seed"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in names}


@dataclass(frozen=True)
class StepsConfig(ExperimentConfig):
    """The settings of an experiment trained for a number of updates."""

    steps: int = 1000  # updates
    eval_every: int = 100  # updates between validations
    ckpt_every: int = 100  # updates between checkpoints


# --- types ---------------------------------------------------------------------------------------

@cache
def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


@cache
def _flat(cls: type) -> dict[str, tuple[str, str | None, Any]]:
    """Flattened setting name -> (field, field of the group or None, type)."""
    out: dict[str, tuple[str, str | None, Any]] = {}
    for name, tp in _hints(cls).items():
        if isinstance(tp, type) and issubclass(tp, ExperimentConfig):
            for inner, (_, _, itp) in _flat(tp).items():
                if inner not in RUN_LEVEL:
                    out[f"{name}_{inner}"] = (name, inner, itp)
        else:
            out[name] = (name, None, tp)
    return out


def _optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for ``X | None``, else (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    """How a setting's type reads in messages: ``an int``, ``a float or none``, ..."""
    inner, opt = _optional(tp)
    if typing.get_origin(inner) is tuple:
        name = "comma-separated list"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}{' or none' if opt else ''}"


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """``value`` as a ``tp``: int → float for a float setting, a list → tuple; else TypeError."""
    inner, opt = _optional(tp)
    if value is None and opt:
        return None
    if inner is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if inner is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if inner in (bool, str) and isinstance(value, inner):
        return value
    if (typing.get_origin(inner) is tuple and isinstance(value, list | tuple)
            and all(isinstance(v, str) for v in value)):
        return tuple(value)
    if isinstance(inner, type) and issubclass(inner, ExperimentConfig) and isinstance(value, inner):
        return value
    raise TypeError(f"{name} must be {type_name(tp)}, got {value!r}")


def parse_value(key: str, tp: Any, raw: str) -> Any:
    """The value of ``key=raw`` for a setting of type ``tp``."""
    inner, opt = _optional(tp)
    if opt and raw.strip().lower() in ("", "none"):
        return None
    try:
        if inner is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if inner is int:
            return int(raw)
        if inner is float:
            return float(raw)
        if inner is str:
            return raw
        if typing.get_origin(inner) is tuple:
            return tuple(v.strip() for v in raw.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{key}={raw!r}: expected {type_name(tp)}") from None
    raise TypeError(f"{key}: settings of type {tp} cannot be given on the command line")


# --- ranges --------------------------------------------------------------------------------------

# What the settings shared by the experiments may be (a setting an experiment lacks is not
# checked). Experiment-specific relations (min_items <= max_items, …) are checked by the task
# when it is built (see :func:`noisyact.experiments.base.preflight`).
_AT_LEAST_1 = ("batch_size", "steps", "seeds", "hidden", "mlp", "emb", "dim", "dim_word",
               "att_dim", "layers", "bptt", "epochs", "eval_batch", "eval_chunks", "pass_steps",
               "check_every", "beam", "max_out", "maxlen", "memory_slots", "memory_width", "reads",
               "image_size", "length", "vocab", "n_train", "n_valid", "n_test", "n_eval",
               "valid_size", "test_size", "valid_bleu_size", "target_length", "target_nesting",
               "max_objects", "min_freq", "max_items", "curriculum_min", "eval_every",
               "ckpt_every", "log_every")
_AT_LEAST_0 = ("eval_tokens", "max_train_tokens", "eval_size", "train_limit", "check_at",
               "decay_after", "train_eval_tokens")  # 0: off (all) or a count from 0
_POSITIVE = ("lr", "anneal_every", "c0", "solved_nll", "min_lr", "alpha")
_NONNEGATIVE = ("clip", "clip_value", "init", "init_std", "ortho_scale", "c_floor", "c_fixed",
                "c", "alpha_c", "curriculum_slope")
_FRACTION = ("train_fraction", "curriculum_frac", "decay", "lr_decay", "target_acc")  # (0, 1]


def check_settings(cfg: ExperimentConfig | Mapping[str, Any]) -> None:
    """Refuse (``ValueError`` naming the setting) a value no row could train with: sizes and
    counts below 1, negative rates and scales, fractions outside their range, NaN or infinity.
    ``cfg``: a config (checked as :meth:`~ExperimentConfig.to_dict` records it) or such a dict."""
    d = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg

    def bad(key: str, what: str) -> ValueError:
        return ValueError(f"{key} must be {what}, got {d[key]!r}")

    for key, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise bad(key, "a finite number")
    for key in _AT_LEAST_1:
        if key in d and not d[key] >= 1:
            raise bad(key, ">= 1")
    for key in _AT_LEAST_0 + _NONNEGATIVE:
        if key in d and not d[key] >= 0:
            raise bad(key, ">= 0")
    for key in _POSITIVE:
        if key in d and not d[key] > 0:
            raise bad(key, "> 0")
    for key in _FRACTION:
        if key in d and not 0 < d[key] <= 1:
            raise bad(key, "in (0, 1]")
    if "dropout" in d and not 0 <= d["dropout"] < 1:
        raise bad("dropout", "in [0, 1)")


__all__ = ["ExperimentConfig", "StepsConfig", "check_settings", "optional", "parse_value",
           "type_name"]
