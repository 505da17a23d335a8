"""The Python API for notebooks: the same configs, components and loop as `metaexp train`, without a Hydra
run. `compose` -> `build` or `train` -> `load_run`, and `algorithm.adapt(params, support_x, support_y)` for one
task."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from metaexp.configs import compose, config_dir
from metaexp.trust import check_targets

__all__ = ["compose", "config_dir", "build", "train", "load_run", "LoadedRun"]


def build(cfg: DictConfig, device: str = "cpu"):
    """The run's components (data set splits as samplers, algorithm, initial params, optimizer, scheduler)."""
    from metaexp.components import resolve_device
    from metaexp.loop import build_run

    return build_run(cfg, resolve_device(device))


def train(cfg: DictConfig, run_dir) -> float:
    """Meta-train into `run_dir` exactly as the CLI would (checkpoints, metrics.jsonl, .hydra/config.yaml);
    returns the best validation value."""
    from metaexp.loop import train as train_loop

    return train_loop(cfg, Path(run_dir))


@dataclass
class LoadedRun:
    """A finished (or stopped) run: its config, rebuilt algorithm, weights and records."""

    cfg: DictConfig
    algorithm: object
    params: dict
    step: int
    metrics: list = field(default_factory=list)
    reports: dict = field(default_factory=dict)


def load_run(run_dir, checkpoint: str = "best", trust: tuple = ()) -> LoadedRun:
    """Rebuild a run's algorithm from the config in its `checkpoints/<checkpoint>.pt` (no data is read), with
    its weights, metrics rows and evaluation reports. The config may name only metaexp's components (and
    torch's optimizers), or classes under the module prefixes in `trust`: a checkpoint from elsewhere cannot
    run code (metaexp.trust)."""
    from metaexp import checkpoint as checkpoints
    from metaexp.components import build as build_component, objective_of
    from metaexp.evaluate import checked_params
    from metaexp.logs import read_metrics

    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    state = checkpoints.load(path)
    cfg = OmegaConf.create(state["config"])
    check_targets(cfg, path, trust)
    model = build_component(cfg.backbone, "backbone")
    algorithm = build_component(cfg.algorithm, "algorithm", model=model, objective=objective_of(cfg))
    params = checked_params(algorithm.init_params(), state["params"], path)
    metrics = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    reports = {p.name: json.loads(p.read_text()) for p in sorted(run_dir.glob("eval-*.json"))}
    return LoadedRun(
        cfg=cfg,
        algorithm=algorithm,
        params={k: torch.as_tensor(v) for k, v in params.items()},
        step=state["step"],
        metrics=metrics,
        reports=reports,
    )
