"""Evaluation: adapt on held-out tasks, report mean and 95% confidence interval, write eval.json."""

import contextlib
import inspect
import json
import math
import statistics
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metaexp import checkpoint, labels
from metaexp.components import (
    build,
    build_algorithm,
    build_sampler,
    check_training_norm,
    component_class,
    resolve_device,
)
from metaexp.backbones.layers import training_statistics
from metaexp.engine import task_chunk_size
from metaexp.episodes import load_episodes, read_episodes, ways_of, write_episodes
from metaexp.errors import MetaexpError
from metaexp.files import replacing
from metaexp.logs import console, summary_table
from metaexp.rundir import checkpoint_file, run_dir_of
from metaexp.settings import check_eval
from metaexp.trust import check_targets
from metaexp.samplers import task_generator


def test_statistics(norm: str, algorithm, params: dict, train_sampler, generator):
    """The batch-norm statistics of a test (`test.norm`): `episode`, each batch's own (transductive, as the MAML
    papers test); `training`, statistics of 2,000 training images under the current weights (ProtoNets,
    Matching Networks, MetaOptNet)."""
    if norm == "episode":
        return contextlib.nullcontext()
    if not hasattr(train_sampler, "some_images"):
        raise MetaexpError(
            f"test.norm=training normalises with statistics of training images, and {train_sampler.objective.task} "
            f"tasks have none. Use test.norm=episode."
        )
    images = train_sampler.some_images(2000, generator)
    return training_statistics(algorithm.model, algorithm.model_params(params), images)  # no `meta.` learnables


def statistics_generator(seed: int, device) -> torch.Generator:
    """The draw of training images for `test.norm=training`: fixed per seed, apart from every task stream."""
    return task_generator(seed, "train", device, stream=999)  # 999: a stream no rank's training uses


def sampled_batches(sampler, episodes: int, meta_batch: int, generator: torch.Generator, record: list | None = None):
    """`episodes` tasks in meta-batches; with `record`, their (rows, rotations) draws are appended to it."""
    for start in range(0, episodes, meta_batch):
        size = min(meta_batch, episodes - start)
        if record is None:
            yield sampler.sample(size, generator)
        else:
            record.append(sampler.draw(size, generator))
            yield sampler.episodes(*record[-1])


def evaluate_batches(algorithm, params: dict, batches, dtype=None):
    """Per-episode query losses and scores (CPU tensors) over an iterable of TaskBatches, vmapped in the task
    chunks training uses (on a CPU, 4 image tasks at a time)."""
    losses, scores = [], []
    for batch in batches:
        chunk = task_chunk_size("auto", batch.support_x.device, batch)
        loss, score = algorithm.evaluate(params, batch.to(dtype=dtype), chunk=chunk)
        losses.append(loss.float().cpu())
        scores.append(score.float().cpu())
    if not losses:
        raise MetaexpError(
            "There are no episodes to evaluate: set eval.episodes above 0, or give an episode file that lists some."
        )
    return torch.cat(losses), torch.cat(scores)


def mean_ci95(values) -> tuple:
    """Mean and 1.96 * sample std / sqrt(n) of a sequence of numbers."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), 1.96 * std / math.sqrt(len(values))


def write_report(path: Path, report: dict) -> None:
    with replacing(path, "w") as file:
        file.write(json.dumps(report, indent=2) + "\n")


def report_name(settings: dict, checkpoint: Path, standard: dict) -> str:
    """`eval-<split>-<setting>[-<departures>][-<k>steps]-<n>ep[-seed<s>][-<checkpoint>].json`, so evaluations in
    other settings or of other checkpoints sit side by side (a 20-way evaluation does not replace the 5-way one,
    nor best.pt's last.pt's, nor a test with another discount the standard one) and a repeat of one setting
    replaces its own. `standard` is the run's own test sampler; last.pt, the default, adds no suffix."""
    sampler = settings["sampler"]
    if settings["episodes_file"]:
        setting = Path(settings["episodes_file"]).stem
    elif "ways" in sampler:
        setting = f"{sampler['ways']}w{sampler['shots']}s{sampler['queries']}q"
    elif "trajectories" in sampler:
        setting = labels.setting(sampler)
    else:
        setting = f"{sampler['shots']}shot{sampler['queries']}q"
    setting += labels.departures(standard, sampler)
    steps = f"-{settings['inner_steps']}steps" if settings["inner_steps"] is not None else ""
    seed = f"-seed{settings['seed']}" if settings["seed"] else ""
    norm = "-trainingnorm" if settings.get("norm") == "training" else ""
    which = f"-{checkpoint.stem}" if checkpoint.stem != "last" else ""
    return f"eval-{settings['split']}-{setting}{steps}{norm}-{settings['episodes']}ep{seed}{which}.json"


def evaluate_checkpoint(cfg: DictConfig) -> float:
    """`metaexp eval`: rebuild the run from its checkpoint, score it on held-out tasks, write its report."""
    check_eval(cfg)
    path = checkpoint_file(Path(cfg.checkpoint))
    state = checkpoint.load(path)
    run_cfg = OmegaConf.create(state["config"])
    check_targets(run_cfg, path, cfg.get("trust"))
    protocol = run_cfg.get("test") or {}
    standard = OmegaConf.to_container(OmegaConf.merge(run_cfg.sampler, protocol.get("sampler") or {}))
    episodes = load_episodes(Path(cfg.eval.episodes_file)) if cfg.eval.episodes_file else None
    chosen = {**(protocol.get("sampler") or {}), **{k: v for k, v in cfg.sampler.items() if v is not None}}
    if episodes is not None and "ways" in run_cfg.sampler:
        chosen["ways"] = ways_of(episodes)  # the file's own N, whatever the run trained on
    for key, value in chosen.items():
        if key not in run_cfg.sampler and not takes(run_cfg.sampler._target_, key):
            raise MetaexpError(
                f"sampler.{key} does not apply to this checkpoint's sampler "
                f"({run_cfg.sampler._target_}); leave it unset."
            )
        run_cfg.sampler[key] = value
    if cfg.test.inner_steps is not None:
        run_cfg.test.inner_steps = cfg.test.inner_steps  # the algorithm's eval_inner_steps follows this key
    norm = cfg.test.norm or run_cfg.test.get("norm") or "episode"  # checkpoints before test.norm: episode
    if cfg.dataset.root is not None:
        if "root" not in run_cfg.dataset:
            raise MetaexpError(
                f"dataset.root does not apply: this checkpoint's data set "
                f"({run_cfg.dataset._target_}) is generated, not read from disk; leave it unset."
            )
        run_cfg.dataset.root = cfg.dataset.root
    if norm == "training":
        check_training_norm(component_class(run_cfg.algorithm))
    device = resolve_device(cfg.trainer.device)
    try:
        dataset = build(run_cfg.dataset, "dataset")
        sampler = build_sampler(run_cfg, dataset, cfg.eval.split, device)
        algorithm = build_algorithm(run_cfg, sampler)
    except (MetaexpError, OmegaConfBaseException) as error:
        raise MetaexpError(f"The config saved in {path} cannot be rebuilt into a model: {error}") from error
    params = checked_params(algorithm.init_params(), state["params"], path)
    params = {k: v.to(device) for k, v in params.items()}
    generator = task_generator(cfg.seed, cfg.eval.split, device)
    if hasattr(sampler, "act_with"):
        scores, losses, extra = adaptation_scores(cfg, sampler, algorithm, params, generator, norm)
    else:
        train_sampler = build_sampler(run_cfg, dataset, "train", device) if norm == "training" else sampler
        # The run's own seed, not the eval's: the statistics stay those its validation used, whatever episodes.
        with test_statistics(norm, algorithm, params, train_sampler, statistics_generator(run_cfg.seed, device)):
            scores, losses, extra = episode_scores(cfg, sampler, dataset, algorithm, params, episodes, generator)
    metric = sampler.objective.metric
    mean, ci95 = mean_ci95(scores.tolist())
    curve = extra.get("by_inner_step", [])
    settings = {
        "split": cfg.eval.split,
        "seed": cfg.seed,
        "episodes_file": cfg.eval.episodes_file,
        "episodes": len(scores),
        "inner_steps": algorithm.eval_inner_steps,
        "norm": norm,
        "sampler": {k: v for k, v in OmegaConf.to_container(run_cfg.sampler).items() if k != "_target_"},
    }
    report = {
        "metric": metric,
        "mean": mean,
        "ci95": ci95,
        "episodes": len(scores),
        "loss": losses.mean().item() if losses is not None else None,
        "checkpoint": str(path),
        "step": state["step"],
        "settings": settings,
        **extra,
    }
    output = Path(cfg.eval.output) if cfg.eval.output else run_dir_of(path) / report_name(settings, path, standard)
    write_report(output, report)
    console.print(
        summary_table(
            f"metaexp eval ({cfg.eval.split})",
            {
                metric: f"{mean:.4f} ± {ci95:.4f} (95% CI)",
                **{f"{metric} after {r['steps']} steps": f"{r['mean']:.4f} ± {r['ci95']:.4f}" for r in curve},
                "episodes": len(scores),
                "checkpoint": str(path),
                "step": state["step"],
                "written": str(output),
            },
        )
    )
    return mean


def episode_scores(cfg, sampler, dataset, algorithm, params: dict, episodes, generator) -> tuple:
    """(scores, losses, {}) over the test episodes: sampled, or read from an episode file (and saved to one)."""
    draws = None
    if episodes is not None:
        batches = read_episodes(Path(cfg.eval.episodes_file), episodes, sampler, dataset, cfg.eval.meta_batch)
    else:
        if cfg.eval.save_episodes and not hasattr(sampler, "draw"):
            raise MetaexpError("eval.save_episodes works for classification episodes only.")
        draws = [] if cfg.eval.save_episodes else None
        batches = sampled_batches(sampler, cfg.eval.episodes, cfg.eval.meta_batch, generator, draws)
    losses, scores = evaluate_batches(algorithm, params, batches)
    if draws is not None:
        write_episodes(Path(cfg.eval.save_episodes), draws, sampler.shots, cfg.eval.split)
    return scores, losses, {}


def adaptation_scores(cfg, sampler, algorithm, params: dict, generator, norm: str) -> tuple:
    """(returns after the algorithm's test inner steps, None, {"by_inner_step": [...]}) of a policy on
    `eval.episodes` held-out tasks: the curve of returns after 0..curve_steps policy-gradient steps."""
    if cfg.eval.episodes_file or cfg.eval.save_episodes:
        raise MetaexpError("eval.episodes_file and eval.save_episodes are for classification episodes only.")
    if norm != "episode":
        raise MetaexpError(
            f"test.norm={norm} sets batch-norm statistics of images, and a policy has no batch norm; leave "
            f"test.norm unset for reinforcement-learning checkpoints."
        )
    if algorithm.eval_inner_steps > sampler.curve_steps:
        raise MetaexpError(
            f"test.inner_steps={algorithm.eval_inner_steps} is past the curve this test measures "
            f"(sampler.curve_steps={sampler.curve_steps} policy-gradient steps). Set "
            f"sampler.curve_steps={algorithm.eval_inner_steps} as well, or fewer inner steps."
        )
    sampler.act_with(algorithm, params, algorithm.eval_inner_steps)
    curve = sampler.adaptation_curve(cfg.eval.episodes, cfg.eval.meta_batch, generator).float().cpu()
    steps = algorithm.eval_inner_steps
    by_step = [dict(zip(("steps", "mean", "ci95"), (k, *mean_ci95(row.tolist())))) for k, row in enumerate(curve)]
    return curve[steps], None, {"by_inner_step": by_step}


def takes(target: str, key: str) -> bool:
    """Whether the sampler class `target` has the setting `key`: one added after a checkpoint was saved
    applies to it although its saved config does not name it."""
    return key in inspect.signature(get_class(target)).parameters


def checked_params(expected: dict, saved: dict, path: Path) -> dict:
    """The saved tensors for the parameters the rebuilt algorithm expects, with matching shapes."""
    missing = [k for k in expected if k not in saved]
    wrong = [k for k in expected if k in saved and saved[k].shape != expected[k].shape]
    if missing or wrong:
        detail = (
            f"missing {', '.join(missing[:4])}"
            if missing
            else f"{wrong[0]} is {tuple(saved[wrong[0]].shape)}, the model needs {tuple(expected[wrong[0]].shape)}"
        )
        raise MetaexpError(
            f"The weights in {path} do not fit the model rebuilt from its config ({detail}). A head-based "
            f"algorithm cannot change sampler.ways at evaluation; evaluate with the ways it was trained on."
        )
    return {k: saved[k] for k in expected}
