"""Reptile (Nichol et al. 2018): SGD on each task's support set, then move the weights toward the average
adapted weights. The objective 0.5 * ||theta - mean(phi)||^2 has exactly that gradient."""
import torch
from torch.func import grad

from metaexp.algorithms.base import Algorithm
from metaexp.models import predict


class Reptile(Algorithm):
    def __init__(self, model, objective, inner_lr: float = 0.001, inner_steps: int = 5,
                 eval_inner_steps: int | None = None):
        super().__init__(model, objective)
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.eval_inner_steps = eval_inner_steps or inner_steps

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        def support_loss(fast):
            return self.objective.loss(predict(self.model, fast, support_x), support_y)

        fast = {k: v.detach() for k, v in params.items()}
        for _ in range(self.inner_steps if step is not None else self.eval_inner_steps):
            grads = grad(support_loss)(fast)
            fast = {k: w - self.inner_lr * grads[k] for k, w in fast.items()}
        pull = sum(0.5 * (params[k] - fast[k]).square().sum() for k in params)
        prediction = predict(self.model, fast, query_x)
        return pull, self.objective.loss(prediction, query_y), self.objective.score(prediction, query_y)
