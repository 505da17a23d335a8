"""Reptile (Nichol et al. 2018): SGD on each task's support set, then move the weights toward the average
adapted weights. The objective 0.5 * ||theta - mean(phi)||^2 has exactly that gradient."""

from functools import partial

from metaexp.algorithms.base import Algorithm, sgd
from metaexp.backbones import predict


class Reptile(Algorithm):
    def __init__(
        self, model, objective, inner_lr: float = 0.001, inner_steps: int = 5, eval_inner_steps: int | None = None
    ):
        super().__init__(model, objective)
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps

    def adapted_weights(self, params: dict, support_x, support_y, steps: int) -> dict:
        """SGD from the (detached) meta-parameters; Reptile needs no gradient through it."""

        def support_loss(fast):
            return self.objective.loss(predict(self.model, fast, support_x), support_y)

        fast = {k: v.detach() for k, v in params.items()}
        for fast in sgd(support_loss, fast, lambda name, i: self.inner_lr, steps):
            pass
        return fast

    def adapt(self, params: dict, support_x, support_y):
        return partial(predict, self.model, self.adapted_weights(params, support_x, support_y, self.eval_inner_steps))

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        steps = self.inner_steps if step is not None else self.eval_inner_steps
        fast = self.adapted_weights(params, support_x, support_y, steps)
        pull = sum(0.5 * (params[k] - fast[k]).square().sum() for k in params)
        prediction = predict(self.model, fast, query_x)
        return pull, self.objective.loss(prediction, query_y), self.objective.score(prediction, query_y)
