"""ACMRR, adaptive-control-oriented meta ridge regression (the baseline of Richards et al., RSS 2021, after
O'Connell et al. 2021's Meta-Learning-Based Robust Adaptive Flight Control): shared features y(q, dq) are
meta-trained so that, for each wind, the least-squares last layer A fitted on some of its transitions predicts
the disturbance f_ext on all of them. The controller then adapts A online with the same features."""

import torch.nn.functional as F

from metaexp.algorithms.base import ControlAlgorithm, ridge_weights
from metaexp.backbones import embed


class ACMRR(ControlAlgorithm):
    """`ridge` regularises the per-task least-squares fit (the authors' 1e-6 on dt-scaled regressors, i.e.
    1e-2 on these unscaled ones)."""

    view = "transitions"

    def __init__(self, model, objective, ridge: float = 1e-2):
        super().__init__(model, objective)
        self.ridge = ridge

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        prediction = self.adapt(params, support_x, support_y)(query_x)
        loss = F.mse_loss(prediction, query_y)
        return loss, loss, loss

    def adapt(self, params, support_x, support_y):
        weights = ridge_weights(embed(self.model, params, support_x), support_y, self.ridge)
        return lambda query_x: embed(self.model, params, query_x) @ weights
