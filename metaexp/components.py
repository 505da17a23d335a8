"""Compose the run's components from the config with `hydra.utils.instantiate`."""

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from metaexp.algorithms.base import Algorithm
from metaexp.errors import MetaexpError


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


def check_objective(node: DictConfig, objective) -> None:
    """Refuse a classification-only algorithm on regression tasks before its config is resolved (its
    `ways: ${sampler.ways}` would fail first, with a message about a missing key)."""
    try:
        algorithm = get_class(node._target_)
    except (ImportError, AttributeError, ValueError, OmegaConfBaseException):
        return  # build() reports an unknown class with the node's name
    if isinstance(algorithm, type) and issubclass(algorithm, Algorithm):
        algorithm.check_objective(objective)


def check_backbone(node: DictConfig, sampler) -> None:
    """Refuse a policy backbone on supervised tasks, or any other backbone on a reinforcement-learning task
    family, before the config is resolved (a classifier's `${sampler.ways}` would fail first, unhelpfully)."""
    try:
        policy = getattr(get_class(node._target_), "is_policy", False)
    except (ImportError, AttributeError, ValueError, OmegaConfBaseException):
        return  # build() reports an unknown class with the node's name
    name = node._target_.rsplit(".", 1)[-1]
    if policy and not hasattr(sampler, "act_with"):
        raise MetaexpError(
            f"backbone={name} is a policy for reinforcement-learning task families, but {type(sampler).__name__} "
            f"draws {sampler.objective.task} tasks. Pick a backbone for them (mlp for the sinusoid, conv4 for "
            f"images), or a reinforcement-learning data set (dataset=navigation2d)."
        )
    if not policy and hasattr(sampler, "act_with"):
        raise MetaexpError(
            f"The task family is reinforcement learning and needs a policy backbone, but the backbone is {name}. "
            f"Use backbone=gaussian_policy."
        )


def build_sampler(cfg: DictConfig, dataset, split: str, device: torch.device):
    """The task sampler over one split of the data set; its complaints name the split."""
    data = dataset.split(split)
    try:
        return build(cfg.sampler, "sampler", data=data, device=device)
    except MetaexpError as error:
        if str(error).startswith("sampler."):
            raise
        raise MetaexpError(f"The {split} split: {error}") from error


def build_algorithm(cfg: DictConfig, sampler):
    """The algorithm over a fresh backbone, checked against the sampler's task shape before any training."""
    check_objective(cfg.algorithm, sampler.objective)
    check_backbone(cfg.backbone, sampler)
    model = build(cfg.backbone, "backbone")
    algorithm = build(cfg.algorithm, "algorithm", model=model, objective=sampler.objective)
    if algorithm.uses_head and model.head.out_features != sampler.outputs:
        raise MetaexpError(
            f"The backbone's head has {model.head.out_features} outputs but the tasks need {sampler.outputs} "
            f"({type(sampler).__name__}). Leave backbone.out_features at its default (for classification it "
            f"follows sampler.ways) or set it to {sampler.outputs}."
        )
    return algorithm
