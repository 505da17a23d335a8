"""Typed schemas of the settings the loop and `metaexp eval` read, checked before anything is built or written.

The YAML files under conf/ hold the values; these dataclasses hold what a value may be, so that
`trainer.steps=abc` or `trainer.meta_batch=0` ends in one paragraph naming the setting instead of a traceback
(or, worse, a run that trains nothing and exits 0).
"""

from dataclasses import dataclass
from types import UnionType
from typing import Any, Optional, Union, get_args, get_origin

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from metaexp.errors import MetaexpError

SPLITS = ("train", "val", "test")

NORMS = ("episode", "training")  # test.norm: each episode's batch statistics, or those of training images


@dataclass
class Trainer:
    steps: int
    meta_batch: int
    device: str
    precision: str
    compile: Any
    cuda_graph: bool
    grad_clip: Optional[float]
    task_chunk: Any
    log_every: int
    val_every: int
    val_tasks: int
    resume: Optional[str]
    minutes: Optional[float] = None
    threads: Any = "auto"

    def check(self) -> None:
        positive("trainer", self, "steps", "meta_batch", "log_every", "val_every", "val_tasks")
        one_of("trainer.precision", self.precision, ("fp32", "bf16"))
        if self.task_chunk != "auto" and not (isinstance(self.task_chunk, int) and self.task_chunk > 0):
            refuse("trainer.task_chunk", self.task_chunk, "`auto` or a whole number of tasks above 0")
        if self.resume is not None and self.resume.lower() in ("false", "none", "no", "off", ""):
            refuse("trainer.resume", self.resume, "null for a fresh run, auto, or a checkpoint or run directory")
        if self.grad_clip is not None and not self.grad_clip > 0:
            refuse("trainer.grad_clip", self.grad_clip, "a norm above 0, or null for no clipping")
        if self.compile not in ("auto", True, False):
            refuse("trainer.compile", self.compile, "auto, true or false")
        if self.threads != "auto" and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            refuse("trainer.threads", self.threads, "`auto` or a whole number of threads above 0")
        if self.minutes is not None and not self.minutes > 0:
            refuse("trainer.minutes", self.minutes, "a number of minutes above 0, or null for no time limit")


@dataclass
class Eval:
    episodes: int
    meta_batch: int
    split: str
    output: Optional[str]
    episodes_file: Optional[str]
    save_episodes: Optional[str]

    def check(self) -> None:
        positive("eval", self, "episodes", "meta_batch")
        one_of("eval.split", self.split, SPLITS)


def check_train(cfg: DictConfig) -> None:
    """Refuse a `metaexp train` config whose seed or trainer settings cannot be run as given."""
    typed(cfg, "seed", int)
    checked(cfg.trainer, Trainer, "trainer").check()
    one_of("test.norm", cfg.test.get("norm") or "episode", NORMS)


def check_eval(cfg: DictConfig) -> None:
    """Refuse a `metaexp eval` config without a checkpoint, or with settings that cannot be run."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise MetaexpError(
            "metaexp eval needs a checkpoint: add checkpoint=PATH, the path of a run's "
            "checkpoints/best.pt or last.pt, or of its run directory."
        )
    typed(cfg, "seed", int)
    checked(cfg.eval, Eval, "eval").check()
    if cfg.test.norm is not None:
        one_of("test.norm", cfg.test.norm, NORMS)
    steps = cfg.test.inner_steps
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
        refuse("test.inner_steps", steps, "0 or more inner steps, or null for the run's own")


def checked(node: DictConfig, schema: type, prefix: str):
    """`node` as an instance of `schema`, or a MetaexpError naming the first key of the wrong type."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except ConfigKeyError as error:
        raise MetaexpError(
            f"{prefix}.{error.key} is not a setting of `{prefix}`. The settings are "
            f"{', '.join(schema.__dataclass_fields__)}; check the spelling."
        ) from error
    except ValidationError as error:
        key = str(error.full_key).split(".")[-1]
        expected = schema.__dataclass_fields__[key].type
        raise MetaexpError(
            f"{prefix}.{key}={error.value!r} is not valid: it must be {describe(expected)}. "
            f"Set it again on the command line, e.g. {prefix}.{key}={example(expected)}."
        ) from error


def typed(cfg: DictConfig, key: str, kind: type) -> None:
    value = cfg.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MetaexpError(f"{key}={value!r} is not valid: it must be {describe(kind)}, e.g. {key}={example(kind)}.")


def positive(prefix: str, settings, *keys: str) -> None:
    for key in keys:
        if getattr(settings, key) < 1:
            refuse(f"{prefix}.{key}", getattr(settings, key), "a whole number of 1 or more")


def one_of(key: str, value, choices: tuple) -> None:
    if value not in choices:
        refuse(key, value, f"one of {', '.join(choices)}")


def refuse(key: str, value, expected: str):
    raise MetaexpError(f"{key}={value!r} is not valid: it must be {expected}. Set it again on the command line.")


def plain_types(kind) -> tuple:
    """The types of an annotation made only of int, float, bool, str and None (`Optional[float]` ->
    (float, NoneType)); () for any other annotation, which is then not checked."""
    options = get_args(kind) if get_origin(kind) in (Union, UnionType) else (kind,)
    return options if all(k in (int, float, bool, str, type(None)) for k in options) else ()


def fits(value, kinds: tuple) -> bool:
    """Whether a config value is of one of `kinds` (a whole number is a number; true is not a number)."""
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    return isinstance(value, tuple(k for k in kinds if k is not bool))


def at_least(key: str, value, low, whole: bool = False) -> None:
    """Refuse a setting below `low` (above it, for a number: `low` is excluded unless `whole`)."""
    if whole and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        refuse(key, value, f"a whole number of {low} or more")
    if not whole and not value > low:
        refuse(key, value, f"a number above {low}")


def within(key: str, value, low: float, high: float) -> None:
    """Refuse a number outside [low, high]."""
    if not low <= value <= high:
        refuse(key, value, f"a number from {low} to {high}")


def describe(kind) -> str:
    """Words for a schema type: `Optional[float]` reads "a number or null"."""
    options = [k for k in get_args(kind) if k is not type(None)] or [kind]
    words = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}.get(
        options[0], "a value"
    )
    return f"{words} or null" if len(options) < len(get_args(kind)) else words


def example(kind) -> str:
    options = [k for k in get_args(kind) if k is not type(None)] or [kind]
    return {int: "10", float: "1.0", bool: "true", str: "auto"}.get(options[0], "1")
