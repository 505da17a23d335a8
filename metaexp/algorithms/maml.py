"""MAML (Finn et al. 2017), FOMAML, and the MAML++ options of Antoniou et al. (2019): per-step learned inner
rates, multi-step loss, first-to-second-order annealing."""
import torch
from torch.func import grad

from metaexp.algorithms.base import Algorithm
from metaexp.models import predict


class MAML(Algorithm):
    def __init__(self, model, objective, inner_lr: float = 0.01, inner_steps: int = 1,
                 eval_inner_steps: int | None = None, first_order: bool = False, per_step_lrs: bool = False,
                 multi_step_loss: int = 0, first_order_until: int = 0):
        super().__init__(model, objective)
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.eval_inner_steps = eval_inner_steps or inner_steps
        self.first_order, self.first_order_until = first_order, first_order_until
        self.per_step_lrs, self.multi_step_loss = per_step_lrs, multi_step_loss

    def init_params(self) -> dict:
        params = super().init_params()
        if self.per_step_lrs:
            params.update({f"meta.lr.{k}": torch.full((self.inner_steps,), self.inner_lr, dtype=v.dtype)
                           for k, v in self.adapted(params).items()})
        return params

    def adapted(self, params: dict) -> dict:
        """The parameters the inner loop changes."""
        return self.model_params(params)

    def inner_rate(self, params: dict, name: str, step: int):
        if self.per_step_lrs:
            return params[f"meta.lr.{name}"][min(step, self.inner_steps - 1)]
        return self.inner_lr

    def forward(self, params: dict, fast: dict, x):
        """Predictions with the adapted weights `fast`."""
        return predict(self.model, fast, x)

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        first_order = self.first_order or (step is not None and step < self.first_order_until)
        steps = self.inner_steps if step is not None else self.eval_inner_steps
        weights = self.step_weights(step, steps)

        def support_loss(fast):
            return self.objective.loss(self.forward(params, fast, support_x), support_y)

        fast = self.adapted(params)
        objective = 0.0
        for i in range(steps):
            grads = grad(support_loss)(fast)
            fast = {k: w - self.inner_rate(params, k, i) * (grads[k].detach() if first_order else grads[k])
                    for k, w in fast.items()}
            if i < steps - 1 and weights[i]:
                objective = objective + weights[i] * self.objective.loss(self.forward(params, fast, query_x), query_y)
        prediction = self.forward(params, fast, query_x)
        loss = self.objective.loss(prediction, query_y)
        return objective + weights[-1] * loss, loss, self.objective.score(prediction, query_y)

    def step_weights(self, step: int | None, steps: int) -> list:
        """Weights of the query loss after each inner step: the last step only, or MAML++'s annealed mix."""
        if step is None or not self.multi_step_loss or step >= self.multi_step_loss:
            return [0.0] * (steps - 1) + [1.0]
        early = max((1.0 - step / self.multi_step_loss) / steps, 0.03 / steps)
        return [early] * (steps - 1) + [1.0 - early * (steps - 1)]
