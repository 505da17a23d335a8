"""The Python API for notebooks: the same configs, components and loop as `metaexp train`, without a Hydra
run. `compose` -> `build` or `train` -> `load_run`, and `algorithm.adapt(params, support_x, support_y)` for one
task."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from metaexp.trust import check_targets


def config_dir() -> str:
    """The config tree: `metaexp/conf` inside an installed wheel, `conf/` at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    return str(next(c for c in (here / "conf", here.parent / "conf") if (c / "train.yaml").is_file()))


def compose(overrides: list | None = None, config_name: str = "train") -> DictConfig:
    """The config `metaexp train OVERRIDES...` would run, e.g. compose(["algorithm=protonet", "dataset=omniglot"])."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides or []))


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
    from metaexp.evaluate import checked_params
    from metaexp.logs import read_metrics

    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    state = checkpoints.load(path)
    cfg = OmegaConf.create(state["config"])
    check_targets(cfg, path, trust)
    objective = get_class(cfg.sampler._target_).objective
    algorithm = instantiate(cfg.algorithm, model=instantiate(cfg.backbone), objective=objective)
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
