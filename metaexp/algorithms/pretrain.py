"""Pretrain-then-adapt, what a meta-learning result is read against (Chen et al. 2019, "A Closer Look at Few-Shot
Classification"; Wang et al. 2019, SimpleShot; Tian et al. 2020, RFS): the backbone and a classifier over all
training classes learn by plain supervised learning on `sampler=pretrain`'s mini-batches, and nothing is
meta-learned. At test the backbone is frozen and a head is made or fitted on each episode's support embeddings;
the subclasses are those heads (`logits`)."""

import math

import torch
from torch.func import grad

from metaexp.algorithms.base import EmbeddingAlgorithm
from metaexp.backbones import embed

CLASSIFIER = "meta.classifier."  # the pretraining classifier's parameters


class Pretrained(EmbeddingAlgorithm):
    views = ("pretrain",)

    def __init__(self, model, objective, ways: int):
        super().__init__(model, objective, ways)
        self.classes = None  # set from a training sampler: a test needs no pretraining classifier

    def check_sampler(self, sampler) -> None:
        super().check_sampler(sampler)
        self.classes = sampler.classes if sampler.pretraining else None

    def init_params(self) -> dict:
        params = super().init_params()
        if self.classes:
            params.update({CLASSIFIER + k: v for k, v in self.fresh_head(self.classes).items()})
        return params

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        if step is None:  # an episode (validation, test): the head of the subclass on the support set
            return super().task_loss(params, support_x, support_y, query_x, query_y, step)
        # A pretraining mini-batch: its images classified among all training classes.
        classifier = {k.removeprefix(CLASSIFIER): v for k, v in params.items() if k.startswith(CLASSIFIER)}
        logits = self.classify(classifier, embed(self.model, params, query_x))
        loss = self.objective.loss(logits, query_y)
        return loss, loss, self.objective.score(logits, query_y)

    def fresh_head(self, rows: int, generator: torch.Generator | None = None) -> dict:
        """A new linear classifier of `rows` classes over the embedding, initialised as torch's nn.Linear."""
        bound = 1 / math.sqrt(self.model.embedding_size)
        weight = torch.empty(rows, self.model.embedding_size).uniform_(-bound, bound, generator=generator)
        return {"weight": weight, "bias": torch.empty(rows).uniform_(-bound, bound, generator=generator)}

    def classify(self, head: dict, z: torch.Tensor) -> torch.Tensor:
        return z @ head["weight"].T + head["bias"]


def fine_tuned(loss, head: dict, steps: int, lr: float, momentum: float, dampening: float, weight_decay: float):
    """`head` after `steps` full-batch steps of torch.optim.SGD's update (momentum with dampening, weight decay)
    on `loss(head)`; vmappable, and differentiable by torch.func even under torch.no_grad."""
    velocity = None
    for _ in range(steps):
        grads = grad(loss)(head)
        step = {k: grads[k] + weight_decay * w for k, w in head.items()}
        velocity = step if velocity is None else {k: momentum * velocity[k] + (1 - dampening) * step[k] for k in step}
        head = {k: w - lr * velocity[k] for k, w in head.items()}
    return head
