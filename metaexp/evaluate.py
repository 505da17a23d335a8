"""Evaluation: adapt on held-out tasks, report mean and 95% confidence interval, write eval.json."""

import contextlib
import inspect
import json
from functools import partial
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metaexp import checkpoint
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
from metaexp.episodes import load_episodes, ways_of
from metaexp.errors import MetaexpError
from metaexp.files import replacing
from metaexp.logs import console, summary_table
from metaexp.rundir import checkpoint_file, run_dir_of
from metaexp.schema import check_eval
from metaexp.objectives import mean_ci95
from metaexp.samplers import departures, task_generator
from metaexp.trust import check_targets


def test_statistics(norm: str, algorithm, params: dict, train_sampler, generator):
    """The batch-norm statistics of a test (`test.norm`): `episode`, each batch's own (transductive, as the MAML
    papers test); `training`, statistics of 2,000 training images under the current weights (ProtoNets,
    Matching Networks, MetaOptNet)."""
    if norm == "episode":
        return contextlib.nullcontext()
    images = train_sampler.training_images(2000, generator)
    return training_statistics(algorithm.model, algorithm.model_params(params), images)  # no `meta.` learnables


def statistics_generator(seed: int, device) -> torch.Generator:
    """The draw of training images for `test.norm=training`: fixed per seed, apart from every task stream."""
    return task_generator(seed, "train", device, stream=999)  # 999: a stream no rank's training uses


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


def write_report(path: Path, report: dict) -> None:
    with replacing(path, "w") as file:
        file.write(json.dumps(report, indent=2) + "\n")


def report_name(settings: dict, checkpoint: Path, family: type, standard: dict) -> str:
    """`eval-<split>-<setting>[-<departures>][-<k>steps]-<n>ep[-seed<s>][-<checkpoint>].json`, so evaluations in
    other settings or of other checkpoints sit side by side (a 20-way evaluation does not replace the 5-way one,
    nor best.pt's last.pt's, nor a test with another discount the standard one) and a repeat of one setting
    replaces its own. `family` is the sampler class, which names the setting; `standard` is the run's own test
    sampler; last.pt, the default, adds no suffix."""
    sampler = settings["sampler"]
    setting = family.report_label(sampler) + departures(family, standard, sampler)
    if settings["episodes_file"]:
        setting = Path(settings["episodes_file"]).stem
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
    standard = OmegaConf.to_container(
        OmegaConf.merge(run_cfg.sampler, (run_cfg.get("test") or {}).get("sampler") or {})
    )
    norm = test_config(cfg, run_cfg)
    device = resolve_device(cfg.trainer.device)
    dataset, sampler, algorithm = rebuild(run_cfg, cfg.eval.split, device, path)
    params = {k: v.to(device) for k, v in checked_params(algorithm.init_params(), state["params"], path).items()}
    sampler.bind(algorithm, params, algorithm.eval_inner_steps)
    train_sampler = build_sampler(run_cfg, dataset, "train", device) if norm == "training" else sampler
    # The run's own seed, not the eval's: the statistics stay those its validation used, whatever episodes.
    with test_statistics(norm, algorithm, params, train_sampler, statistics_generator(run_cfg.seed, device)):
        score = partial(evaluate_batches, algorithm, params)
        result = sampler.test(score, cfg.eval, dataset, task_generator(cfg.seed, cfg.eval.split, device))
    report = make_report(cfg, run_cfg, sampler, algorithm, result, standard=standard, norm=norm, path=path)
    report["step"] = state["step"]
    named = report_name(report["settings"], path, type(sampler), standard)
    output = Path(cfg.eval.output) if cfg.eval.output else run_dir_of(path) / named
    write_report(output, report)
    show(report, cfg.eval.split, output)
    return report["mean"]


def test_config(cfg: DictConfig, run_cfg: DictConfig) -> str:
    """Apply the eval's sampler, inner-step and data-root overrides to the run's config; returns the test's
    batch-norm statistics (`episode` or `training`)."""
    protocol = run_cfg.get("test") or {}
    chosen = {**(protocol.get("sampler") or {}), **{k: v for k, v in cfg.sampler.items() if v is not None}}
    if cfg.eval.episodes_file and takes(run_cfg.sampler._target_, "ways"):
        # The file's own N, whatever the run trained on.
        chosen["ways"] = ways_of(load_episodes(Path(cfg.eval.episodes_file)))
    for key, value in chosen.items():
        if key not in run_cfg.sampler and not takes(run_cfg.sampler._target_, key):
            raise MetaexpError(
                f"sampler.{key} does not apply to this checkpoint's sampler "
                f"({run_cfg.sampler._target_}); leave it unset."
            )
        run_cfg.sampler[key] = value
    if cfg.test.inner_steps is not None:
        run_cfg.test.inner_steps = cfg.test.inner_steps  # the algorithm's eval_inner_steps follows this key
    if cfg.dataset.root is not None:
        if "root" not in run_cfg.dataset:
            raise MetaexpError(
                f"dataset.root does not apply: this checkpoint's data set "
                f"({run_cfg.dataset._target_}) is generated, not read from disk; leave it unset."
            )
        run_cfg.dataset.root = cfg.dataset.root
    norm = cfg.test.norm or protocol.get("norm") or "episode"  # checkpoints before test.norm: episode
    if norm == "training":
        check_training_norm(component_class(run_cfg.algorithm))
    return norm


def rebuild(run_cfg: DictConfig, split: str, device, path: Path) -> tuple:
    """(data set, sampler of `split`, algorithm) from a checkpoint's config."""
    try:
        dataset = build(run_cfg.dataset, "dataset")
        sampler = build_sampler(run_cfg, dataset, split, device)
        return dataset, sampler, build_algorithm(run_cfg, sampler)
    except (MetaexpError, OmegaConfBaseException) as error:
        raise MetaexpError(f"The config saved in {path} cannot be rebuilt into a model: {error}") from error


def make_report(cfg, run_cfg, sampler, algorithm, result, *, standard: dict, norm: str, path: Path) -> dict:
    """The eval report: the metric's mean and 95% interval, and the settings that name the test, among them
    the task family's own name of this setting (`label`) and of the run's standard test (`standard_label`)."""
    kind = type(sampler)
    used = {k: v for k, v in OmegaConf.to_container(run_cfg.sampler).items() if k != "_target_"}
    mean, ci95 = mean_ci95(result.scores.tolist())
    settings = {
        "split": cfg.eval.split,
        "seed": cfg.seed,
        "episodes_file": cfg.eval.episodes_file,
        "episodes": len(result.scores),
        "inner_steps": algorithm.eval_inner_steps,
        "norm": norm,
        "sampler": used,
        "label": kind.label(used) + departures(kind, standard, used),
        "standard_label": kind.label(standard),
    }
    return {
        "metric": result.metric or sampler.objective.metric,
        "higher_is_better": sampler.objective.higher_is_better,
        "mean": mean,
        "ci95": ci95,
        "episodes": len(result.scores),
        "loss": result.losses.mean().item() if result.losses is not None else None,
        "checkpoint": str(path),
        "settings": settings,
        **result.extra,
    }


def show(report: dict, split: str, output: Path) -> None:
    metric, curve = report["metric"], report.get("by_inner_step", [])
    console.print(
        summary_table(
            f"metaexp eval ({split})",
            {
                metric: f"{report['mean']:.4f} ± {report['ci95']:.4f} (95% CI)",
                **{f"{metric} after {r['steps']} steps": f"{r['mean']:.4f} ± {r['ci95']:.4f}" for r in curve},
                "episodes": report["episodes"],
                "checkpoint": report["checkpoint"],
                "step": report["step"],
                "written": str(output),
            },
        )
    )


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
