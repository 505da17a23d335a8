"""ACMRR, adaptive-control-oriented meta ridge regression (the baseline of Richards et al., RSS 2021, after
O'Connell et al. 2021's Meta-Learning-Based Robust Adaptive Flight Control): shared features y(q, dq) are
meta-trained so that, for each wind, the least-squares last layer A fitted on some of its transitions predicts
the disturbance f_ext on all of them. The controller then adapts A online with the same features."""

import torch.nn.functional as F

from metaexp.algorithms.base import ControlAlgorithm, ridge_weights
from metaexp.backbones import embed


class ACMRR(ControlAlgorithm):
    """The authors' train_lstsq.py regresses dt f_ext on dt y (forward Euler of the plant); here the same
    regression is written in f_ext itself, so their coefficients are divided by dt^2: `ridge` regularises the
    per-task least-squares fit (their 1e-6, i.e. 1e-2 here) and `l2` the features' squared weights (their 1e-4,
    i.e. 1.0 here), added once per meta-batch and divided, as theirs, by the number of query transitions of all
    its tasks: a penalty that weighs more the fewer flights there are. The loss is the squared error summed
    over the three axes, averaged over transitions."""

    views = ("transitions",)

    def __init__(self, model, objective, ridge: float = 1e-2, l2: float = 1.0):
        super().__init__(model, objective)
        self.ridge, self.l2 = ridge, l2

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        prediction = self.adapt(params, support_x, support_y)(query_x)
        loss = (prediction - query_y).square().sum(-1).mean()
        return loss, loss, F.mse_loss(prediction, query_y)

    def meta_loss(self, params: dict, batch, step: int | None = 0, chunk: int | None = None):
        outer, losses, scores = super().meta_loss(params, batch, step, chunk)
        transitions = batch.query_x.shape[0] * batch.query_x.shape[1]
        return outer + self.l2 * self.penalty(params) / transitions, losses, scores

    def adapt(self, params, support_x, support_y):
        weights = ridge_weights(embed(self.model, params, support_x), support_y, self.ridge)
        return lambda query_x: embed(self.model, params, query_x) @ weights
