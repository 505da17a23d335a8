"""What every algorithm shares: its parameters, the vmap over tasks, and the checks against its backbone."""
from functools import partial

import torch
from torch import nn
from torch.func import vmap

from metaexp.errors import MetaexpError
from metaexp.models import embed
from metaexp.objectives import CLASSIFICATION, Objective
from metaexp.tasks import TaskBatch


class Algorithm:
    """Subclasses define `task_loss(params, support_x, support_y, query_x, query_y, step)` for one task.

    It returns (objective to differentiate, query loss, query score); `step` is the meta-training step, or
    None at evaluation.
    """

    uses_head = True
    classification_only = False

    def __init__(self, model: nn.Module, objective: Objective):
        self.model, self.objective = model, objective
        if self.classification_only and objective is not CLASSIFICATION:
            raise MetaexpError(
                f"{type(self).__name__} classifies by comparing embeddings and cannot learn {objective.metric} "
                f"regression tasks. Pick a gradient-based algorithm (maml, metasgd, reptile) for regression.")
        if self.uses_head and not isinstance(model.head, nn.Linear):
            raise MetaexpError(
                f"{type(self).__name__} adapts the backbone's linear head, but this backbone has none "
                f"(backbone.out_features=null). Set backbone.out_features, or pick protonet/matchingnet/metaoptnet.")

    def init_params(self) -> dict:
        """Meta-parameters: the backbone's weights (less the head if unused), plus the algorithm's own."""
        return {k: p.detach().clone() for k, p in self.model.named_parameters()
                if self.uses_head or not k.startswith("head.")}

    def model_params(self, params: dict) -> dict:
        return {k: v for k, v in params.items() if not k.startswith("meta.")}

    def meta_loss(self, params: dict, batch: TaskBatch, step: int | None = 0, chunk: int | None = None):
        """(objective, per-task query losses [B], per-task scores [B]) for a meta-batch, vmapped over the
        tasks `chunk` at a time (None: all at once)."""
        task = partial(self.task_loss, step=step)
        objectives, losses, scores = vmap(task, in_dims=(None, 0, 0, 0, 0), chunk_size=chunk)(params, *batch)
        return objectives.mean(), losses.detach(), scores.detach()

    def evaluate(self, params: dict, batch: TaskBatch):
        """Per-task query losses and scores after adaptation with the evaluation settings."""
        with torch.no_grad():
            _, losses, scores = self.meta_loss(params, batch, step=None)
        return losses, scores

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        raise NotImplementedError


def one_hot(labels: torch.Tensor, classes: int, dtype) -> torch.Tensor:
    """One-hot rows for `labels`, safe under vmap."""
    return (labels.unsqueeze(-1) == torch.arange(classes, device=labels.device)).to(dtype)


class EmbeddingAlgorithm(Algorithm):
    """Base of the metric/closed-form heads: no inner loop, a class decision made from support embeddings."""

    uses_head = False
    classification_only = True

    def __init__(self, model: nn.Module, objective: Objective, ways: int):
        super().__init__(model, objective)
        self.ways = ways

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        z = embed(self.model, params, torch.cat([support_x, query_x]))
        support_z, query_z = z[:len(support_x)], z[len(support_x):]
        logits = self.logits(params, support_z, one_hot(support_y, self.ways, z.dtype), query_z)
        loss = self.objective.loss(logits, query_y)
        return loss, loss, self.objective.score(logits, query_y)

    def logits(self, params, support_z, support_onehot, query_z):
        raise NotImplementedError
