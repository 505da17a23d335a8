"""Baseline (Chen et al. 2019): a new linear head fine-tuned on each episode's support embeddings, the pretrained
backbone frozen, with the paper's optimiser (SGD 0.01, momentum 0.9, dampening 0.9, weight decay 1e-3). The
paper takes 100 epochs of shuffled batches of 4 support examples; here full-batch steps, as many as its updates
(`steps=null`: 100 x ceil(support / 4), 200 at 5-way 1-shot), so that vmap runs every episode at once, from one
fixed draw of nn.Linear's initialisation."""

import math

import torch

from metaexp.algorithms.pretrain import Pretrained, fine_tuned


class Baseline(Pretrained):
    def __init__(
        self, model, objective, ways: int, steps: int | None = None, lr: float = 0.01, momentum: float = 0.9,
        dampening: float = 0.9, weight_decay: float = 1e-3,
    ):  # fmt: skip
        super().__init__(model, objective, ways)
        self.steps, self.sgd = steps, {"lr": lr, "momentum": momentum, "dampening": dampening}
        self.weight_decay = weight_decay
        # The fresh head every episode starts from: one draw, so that vmap needs no randomness.
        self.start = self.fresh_head(ways, torch.Generator().manual_seed(0))

    def logits(self, params, support_z, support_onehot, query_z):
        def loss(head):
            return self.objective.loss(self.classify(head, support_z), support_onehot.argmax(-1))

        start = {k: v.to(support_z) for k, v in self.start.items()}
        steps = self.steps or 100 * math.ceil(len(support_z) / 4)  # the paper's updates: 100 epochs, batches of 4
        head = fine_tuned(loss, start, steps, weight_decay=self.weight_decay, **self.sgd)
        return self.classify(head, query_z)
