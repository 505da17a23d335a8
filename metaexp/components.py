"""Compose the run's components from the config with `hydra.utils.instantiate`."""

import contextlib
import inspect
import typing

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metaexp.algorithms.base import Algorithm
from metaexp import schema
from metaexp.errors import MetaexpError
from metaexp.samplers import TaskSampler


def resolve_device(name: str) -> torch.device:
    """`auto` (a GPU when there is one), `cpu`, `cuda` or `cuda:N`; anything else is refused by name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise MetaexpError(
            f"trainer.device={name!r} is not a device: use auto, cpu, cuda or cuda:N (e.g. trainer.device=cuda:0)."
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MetaexpError(
            f"trainer.device={name} but this machine has no usable CUDA GPU (torch.cuda.is_available() is "
            f"False). Use trainer.device=cpu or trainer.device=auto."
        )
    if device.type not in ("cpu", "cuda"):
        raise MetaexpError(f"trainer.device={name} is not supported: use auto, cpu, cuda or cuda:N.")
    return device


def build(node: DictConfig, what: str, **kwargs):
    """Instantiate one config node; an exception raised inside becomes a MetaexpError naming the node."""
    check_types(node)
    try:
        return instantiate(node, **kwargs)
    except (InstantiationException, OmegaConfBaseException) as error:
        cause = error.__cause__
        if isinstance(cause, MetaexpError):
            raise cause
        raise MetaexpError(
            f"Could not build the {what} from its config: {cause or error}. "
            f"Check the {what} settings (`metaexp train --cfg job` shows them)."
        ) from error


def component_class(node: DictConfig):
    """The class a config node names, or None where it cannot be found (build() then names the node)."""
    try:
        return get_class(node._target_)
    except (ImportError, AttributeError, ValueError, OmegaConfBaseException):
        return None


def check_types(node: DictConfig) -> None:
    """Refuse a value of the wrong type for its class's constructor (`sampler.gamma=abc`, `algorithm.chunks=1.5`)
    in one paragraph, before anything is built: the constructor's annotations are the schema."""
    cls = component_class(node) if isinstance(node, DictConfig) and "_target_" in node else None
    try:
        hints = typing.get_type_hints(cls.__init__) if inspect.isclass(cls) else {}
    except Exception:  # annotations that do not evaluate (a library's) are no schema
        return
    for key in node.keys():
        if key in hints and not OmegaConf.is_missing(node, key):
            with contextlib.suppress(OmegaConfBaseException):  # an interpolation instantiate will report
                value = node[key]
                kinds = schema.plain_types(hints[key])
                if kinds and not schema.fits(value, kinds):
                    schema.refuse(f"{node._key()}.{key}", value, schema.describe(hints[key]))


def check_objective(node: DictConfig, objective) -> None:
    """Refuse a classification-only algorithm on regression tasks before its config is resolved (its
    `ways: ${sampler.ways}` would fail first, with a message about a missing key)."""
    algorithm = component_class(node)
    if isinstance(algorithm, type) and issubclass(algorithm, Algorithm):
        algorithm.check_objective(objective)


def check_backbone(node: DictConfig, sampler) -> None:
    """Refuse a policy backbone on supervised tasks, or any other backbone on a reinforcement-learning task
    family, before the config is resolved (a classifier's `${sampler.ways}` would fail first, unhelpfully)."""
    policy = getattr(component_class(node), "is_policy", False)
    name = node._target_.rsplit(".", 1)[-1]
    if policy and not sampler.acts:
        raise MetaexpError(
            f"backbone={name} is a policy for reinforcement-learning task families, but {type(sampler).__name__} "
            f"draws {sampler.objective.task} tasks. Pick a backbone for them (mlp for the sinusoid, conv4 for "
            f"images), or a reinforcement-learning data set (dataset=navigation2d)."
        )
    if not policy and sampler.acts:
        raise MetaexpError(
            f"The task family is reinforcement learning and needs a policy backbone, but the backbone is {name}. "
            f"Use backbone=gaussian_policy."
        )


def build_sampler(cfg: DictConfig, dataset, split: str, device: torch.device):
    """The task sampler over one split of the data set (told which, where it draws differently per split); its
    complaints name the split."""
    data = dataset.split(split)
    kind = component_class(cfg.sampler)
    told = {"split": split} if isinstance(kind, type) and issubclass(kind, TaskSampler) and kind.per_split else {}
    try:
        return build(cfg.sampler, "sampler", data=data, device=device, **told)
    except MetaexpError as error:
        if str(error).startswith("sampler."):
            raise
        raise MetaexpError(f"The {split} split: {error}") from error


def check_training_norm(algorithm: type) -> None:
    """Refuse test.norm=training for an algorithm class that cannot run its backbone alone over training images."""
    if not getattr(algorithm, "training_norm", True):
        raise MetaexpError(
            f"test.norm=training runs the backbone alone over training images, and {algorithm.__name__} "
            f"runs it as twin networks with fast weights, so it tests with each episode's statistics only. Use "
            f"test.norm=episode."
        )


def build_algorithm(cfg: DictConfig, sampler):
    """The algorithm over a fresh backbone, checked against the sampler's task shape before any training."""
    check_objective(cfg.algorithm, sampler.objective)
    check_backbone(cfg.backbone, sampler)
    model = build(cfg.backbone, "backbone")
    algorithm = build(cfg.algorithm, "algorithm", model=model, objective=sampler.objective)
    algorithm.check_sampler(sampler)
    if cfg.get("test", {}).get("norm") == "training":
        check_training_norm(type(algorithm))
    if algorithm.uses_head and model.head.out_features != sampler.outputs:
        raise MetaexpError(
            f"The backbone's head has {model.head.out_features} outputs but the tasks need {sampler.outputs} "
            f"({type(sampler).__name__}). Leave backbone.out_features at its default (for classification it "
            f"follows sampler.ways) or set it to {sampler.outputs}."
        )
    return algorithm


def objective_of(cfg: DictConfig):
    """The objective of a run's tasks from its config alone, without drawing a task (`metaexp.load_run`)."""
    return component_class(cfg.sampler).objective_from(lambda: build(cfg.dataset, "dataset"), cfg.sampler)
