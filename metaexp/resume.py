"""Which checkpoint a run continues, whether the new config may continue it, and restoring its state.

A resume may change how long and how fast the run trains (steps, logging, learning rate, schedule, device)
but not what it learns (data, tasks, model, algorithm, seed): those keys are refused, with their old and new
values, before anything is written. A setting added to a component since the checkpoint was written is accepted
at the default of that component's constructor: options enter the code with the default that keeps the old
behaviour, so such a run learns what it learned before.
"""

import inspect
import logging
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from metaexp import checkpoint, distributed, rundir
from metaexp.errors import MetaexpError
from metaexp.rundir import RunDirError

log = logging.getLogger("metaexp.loop")

# Keys a resume may change; `_target_` under optim/scheduler never (the saved state belongs to that class).
SAFE = (
    "trainer.steps",
    "trainer.minutes",
    "trainer.log_every",
    "trainer.val_every",
    "trainer.resume",
    "trainer.device",
    "trainer.compile",
    "trainer.cuda_graph",
    "trainer.task_chunk",
    "trainer.precision",
    "trainer.threads",
    "trainer.grad_clip",
    "optim.",
    "scheduler.",
    "logger",
    "paths.",
    "test.",
    "dataset.root",
    "dataset.download",
    "dataset.workers",
)


def flat(node, prefix: str = "") -> dict:
    """`{"a.b": value}` for every leaf of a nested config container."""
    if isinstance(node, dict) and node:
        return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def changes(saved: dict, cfg: DictConfig) -> list:
    """(key, saved value, new value) for each setting that differs between a checkpoint's config and `cfg`."""
    old, new = flat(saved), flat(OmegaConf.to_container(cfg, resolve=False))
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def is_safe(key: str) -> bool:
    return key.startswith(SAFE) and not key.endswith("._target_")


def added_at_default(key: str, old: dict, cfg: DictConfig) -> bool:
    """Whether `key` is absent from the saved config (flattened, `old`) and set, in `cfg`, to the default of the
    constructor that its node's `_target_` names (with the same `_target_` saved): an option added since, left
    as it was."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else None
    if key in old or not isinstance(node, DictConfig) or old.get(f"{parent}._target_") != node.get("_target_"):
        return False
    try:
        default = inspect.signature(get_class(node["_target_"])).parameters[name].default
    except (ImportError, KeyError, TypeError, ValueError):
        return False
    return default is not inspect.Parameter.empty and default == node[name]


def continuable(saved: dict, cfg: DictConfig) -> tuple:
    """(the changes a resume applies, those that forbid it) between a checkpoint's config and `cfg`."""
    old = flat(saved)
    found = [c for c in changes(saved, cfg) if not added_at_default(c[0], old, cfg)]
    return [c for c in found if is_safe(c[0])], [c for c in found if not is_safe(c[0])]


def check_changes(saved: dict, cfg: DictConfig, source: Path) -> list:
    """The safe changes to apply on resume; raise naming the others."""
    safe, unsafe = continuable(saved, cfg)
    if unsafe:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in unsafe[:6])
        raise RunDirError(
            f"Cannot resume from {source}: the config changed what the run learns ({listed}). A resume may change "
            f"only steps, logging, device, learning rate and schedule. Put those settings back, or start a new "
            f"run without trainer.resume. Nothing was written."
        )
    return [c for c in safe if c[0] != "trainer.resume"]


def find_resume(cfg: DictConfig, run_dir: Path, outputs_root: Path | None) -> tuple:
    """(checkpoint path, its payload) to continue, or (None, None) for a fresh start; refuses a fresh run over
    an old one and a resume whose config changed what the run learns. `auto` takes this run directory's
    last.pt, else (given `outputs_root`; not in sweeps, whose jobs each own a directory) the newest last.pt
    under it that this config may continue."""
    resume = cfg.trainer.resume
    if resume is None:
        rundir.refuse_used(run_dir)
        return None, None
    if resume == "auto":
        own = rundir.last_checkpoint(run_dir)
        if own.is_file():
            return checked(own, cfg)
        if rundir.previous_run(run_dir):
            log.info("%s has metrics but no checkpoint (stopped before its first); starting it again", run_dir)
            return None, None
        return newest_match(cfg, run_dir, outputs_root) if outputs_root is not None else (None, None)
    source = rundir.checkpoint_file(Path(str(resume)))
    if rundir.run_dir_of(source) != Path(run_dir).resolve():
        rundir.refuse_used(run_dir)
    return checked(source, cfg)


def checked(source: Path, cfg: DictConfig) -> tuple:
    state = checkpoint.load(source)
    for key, old, new in check_changes(state["config"], cfg, source):
        log.info("resume applies a changed setting: %s %r -> %r", key, old, new)
    return source, state


def newest_match(cfg: DictConfig, run_dir: Path, outputs_root: Path) -> tuple:
    """The newest last.pt under `outputs_root` whose run may be continued with `cfg`, else (None, None)."""
    candidates = sorted(outputs_root.glob("**/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if rundir.run_dir_of(candidate) == Path(run_dir).resolve():
            continue
        try:
            state = checkpoint.load(candidate)
        except MetaexpError:
            continue
        if not continuable(state["config"], cfg)[1]:
            return checked(candidate, cfg)
    return None, None


def saved_state(
    cfg: DictConfig,
    *,
    params: dict,
    optimizer,
    scheduler,
    step: int,
    best,
    elapsed: float,
    generators: list,
    metric: str,
) -> dict:
    """What a checkpoint holds, as `restore` reads it back: weights, optimizer and schedule, where the run
    stands, every rank's sampling generator, and the config that rebuilds it."""
    return {
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "optimizer": optimizer.state_dict(),
        "step": step,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "best": best,
        "elapsed_s": elapsed,
        "generator": generators,
        "metric": metric,
        "config": OmegaConf.to_container(cfg, resolve=False),
    }


def restore(state: dict, cfg: DictConfig, params: dict, optimizer, scheduler, generator) -> tuple:
    """Load a checkpoint's weights, optimizer, scheduler and this rank's generator; (step, best, elapsed).

    Optimizer and scheduler settings come from `cfg`, not the checkpoint: `optim.lr=...` on a resume takes
    effect (torch's load_state_dict alone would bring the old learning rate back)."""
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(state["params"][k])
    fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    fresh_schedule = scheduler.state_dict() if scheduler is not None else None
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if resolved(state["config"]) != resolved(cfg):
        for group, fresh in zip(optimizer.param_groups, fresh_groups):
            group.update(fresh)
        if scheduler is not None:
            scheduler.load_state_dict(
                {
                    **fresh_schedule,
                    "last_epoch": state["scheduler"]["last_epoch"],
                    "_step_count": state["scheduler"]["_step_count"],
                }
            )
            rates = scheduler._get_closed_form_lr()
            for group, rate in zip(optimizer.param_groups, rates):
                group["lr"] = rate
            scheduler._last_lr = rates
    generator.set_state(state["generator"][distributed.rank()])
    return state["step"], state["best"], state["elapsed_s"]


def resolved(config) -> dict:
    """The optimizer and scheduler settings of a config, interpolations resolved (T_max follows steps)."""
    config = OmegaConf.create(config if isinstance(config, dict) else OmegaConf.to_container(config))
    return {
        key: OmegaConf.to_container(config[key], resolve=True) if config.get(key) is not None else None
        for key in ("optim", "scheduler")
    }
