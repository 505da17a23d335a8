"""Evaluation: adapt on held-out tasks, report mean and 95% confidence interval, write eval.json."""
import json
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metaexp import checkpoint
from metaexp.build import build, build_algorithm, build_sampler, resolve_device
from metaexp.errors import MetaexpError
from metaexp.logs import console, summary_table
from metaexp.tasks import TaskBatch, task_generator


def evaluate_tasks(algorithm, params: dict, sampler, episodes: int, meta_batch: int,
                   generator: torch.Generator, dtype=None):
    """Per-episode query losses and scores (CPU tensors) over `episodes` sampled tasks."""
    losses, scores = [], []
    for start in range(0, episodes, meta_batch):
        batch = sampler.sample(min(meta_batch, episodes - start), generator)
        loss, score = evaluate_batch(algorithm, params, batch.to(dtype=dtype))
        losses.append(loss)
        scores.append(score)
    return torch.cat(losses), torch.cat(scores)


def evaluate_batch(algorithm, params: dict, batch: TaskBatch):
    loss, score = algorithm.evaluate(params, batch)
    return loss.float().cpu(), score.float().cpu()


def mean_ci95(values: torch.Tensor) -> tuple:
    """Mean and 1.96 * std / sqrt(n)."""
    values = values.double()
    std = values.std(unbiased=True).item() if len(values) > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(len(values))


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run directory a checkpoint belongs to (`<run>/checkpoints/x.pt` -> `<run>`)."""
    parent = checkpoint_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def evaluate_checkpoint(cfg: DictConfig) -> float:
    """`metaexp eval`: rebuild the run from its checkpoint, score it on held-out tasks, write eval.json."""
    path = Path(cfg.checkpoint)
    state = checkpoint.load(path)
    path = path / "checkpoints" / "last.pt" if path.is_dir() else path
    run_cfg = OmegaConf.create(state["config"])
    protocol = run_cfg.get("test") or {}
    chosen = {**(protocol.get("sampler") or {}), **{k: v for k, v in cfg.sampler.items() if v is not None}}
    for key, value in chosen.items():
        if key not in run_cfg.sampler:
            raise MetaexpError(f"sampler.{key} does not apply to this checkpoint's sampler "
                               f"({run_cfg.sampler._target_}); leave it unset.")
        run_cfg.sampler[key] = value
    device = resolve_device(cfg.trainer.device)
    try:
        dataset = build(run_cfg.dataset, "dataset")
        sampler = build_sampler(run_cfg, dataset, cfg.eval.split, device)
        algorithm = build_algorithm(run_cfg, sampler)
    except (MetaexpError, OmegaConfBaseException) as error:
        raise MetaexpError(f"The config saved in {path} cannot be rebuilt into a model: {error}") from error
    inner_steps = cfg.eval.inner_steps if cfg.eval.inner_steps is not None else protocol.get("inner_steps")
    if inner_steps is not None:
        algorithm.eval_inner_steps = inner_steps
    params = checked_params(algorithm.init_params(), state["params"], path)
    params = {k: v.to(device) for k, v in params.items()}
    generator = task_generator(cfg.seed, cfg.eval.split, device)
    losses, scores = evaluate_tasks(algorithm, params, sampler, cfg.eval.episodes, cfg.eval.meta_batch, generator)
    metric = sampler.objective.metric
    mean, ci95 = mean_ci95(scores)
    settings = {"split": cfg.eval.split, "seed": cfg.seed, "inner_steps": getattr(algorithm, "eval_inner_steps", None),
                "sampler": {k: v for k, v in OmegaConf.to_container(run_cfg.sampler).items() if k != "_target_"}}
    report = {"metric": metric, "mean": mean, "ci95": ci95, "episodes": len(scores),
              "loss": losses.mean().item(), "checkpoint": str(path), "step": state["step"], "settings": settings}
    output = Path(cfg.eval.output) if cfg.eval.output else run_dir_of(path) / "eval.json"
    write_report(output, report)
    console.print(summary_table(f"metaexp eval ({cfg.eval.split})", {
        metric: f"{mean:.4f} ± {ci95:.4f} (95% CI)", "episodes": len(scores), "checkpoint": str(path),
        "step": state["step"], "written": str(output)}))
    return mean


def checked_params(expected: dict, saved: dict, path: Path) -> dict:
    """The saved tensors for the parameters the rebuilt algorithm expects, with matching shapes."""
    missing = [k for k in expected if k not in saved]
    wrong = [k for k in expected if k in saved and saved[k].shape != expected[k].shape]
    if missing or wrong:
        detail = (f"missing {', '.join(missing[:4])}" if missing else
                  f"{wrong[0]} is {tuple(saved[wrong[0]].shape)}, the model needs {tuple(expected[wrong[0]].shape)}")
        raise MetaexpError(
            f"The weights in {path} do not fit the model rebuilt from its config ({detail}). A head-based "
            f"algorithm cannot change sampler.ways at evaluation; evaluate with the ways it was trained on.")
    return {k: saved[k] for k in expected}
