"""MAML (Finn et al. 2017), FOMAML, and the MAML++ options of Antoniou et al. (2019): per-step learned inner
rates, multi-step loss, first-to-second-order annealing."""

from functools import partial

import torch

from metaexp.algorithms.base import Algorithm, sgd
from metaexp.backbones import predict


class MAML(Algorithm):
    adapts_policies = True
    adapts_models = True
    compiles = True  # measured: compiled, MAML Conv-4 5-way 1-shot trains at 70 tasks/s against 51 eager

    def __init__(
        self,
        model,
        objective,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        per_step_lrs: bool = False,
        multi_step_loss: int = 0,
        first_order_until: int = 0,
    ):
        super().__init__(model, objective)
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order, self.first_order_until = first_order, first_order_until
        self.per_step_lrs, self.multi_step_loss = per_step_lrs, multi_step_loss

    @property
    def changes_during_training(self) -> bool:
        """The MAML++ schedules change the meta-step as training goes (a captured CUDA graph cannot follow)."""
        return bool(self.multi_step_loss or self.first_order_until)

    def init_params(self) -> dict:
        params = super().init_params()
        if self.per_step_lrs:
            params.update(
                {
                    f"meta.lr.{k}": torch.full((self.inner_steps,), self.inner_lr, dtype=v.dtype)
                    for k, v in self.inner_params(params).items()
                }
            )
        return params

    def inner_params(self, params: dict) -> dict:
        """The parameters the inner loop changes."""
        return self.model_params(params)

    def inner_rate(self, params: dict, name: str, inner_step: int):
        if self.per_step_lrs:
            return params[f"meta.lr.{name}"][min(inner_step, self.inner_steps - 1)]
        return self.inner_lr

    def forward(self, fast: dict, x):
        """Predictions with the adapted weights `fast`."""
        return predict(self.model, fast, x)

    def inner_loop(self, params: dict, support_x, support_y, steps: int, first_order: bool = False, scale=1.0):
        """The adapted weights after each of `steps` inner steps on the support set (rates times `scale`)."""

        def support_loss(fast):
            return self.objective.inner_loss(self.forward(fast, support_x), support_y)

        def rate(name, i):
            return scale * self.inner_rate(params, name, i)

        return sgd(support_loss, self.inner_params(params), rate, steps, first_order)

    def task_start(self, params: dict, support_x, support_y) -> dict:
        """The weights a task's inner loop starts from: the meta-parameters (Proto-MAML adds a head)."""
        return params

    def adapted_weights(self, params: dict, support_x, support_y, steps: int, scale=1.0) -> dict:
        """Every model weight after `steps` inner steps (for a rollout sampler: the adapted policy)."""
        params = self.task_start(params, support_x, support_y)
        fast = self.inner_params(params)
        for fast in self.inner_loop(params, support_x, support_y, steps, scale=scale):
            pass
        return {**self.model_params(params), **fast}

    def adapted(self, params: dict, support_x, support_y) -> dict:
        """The weights `adapt` predicts with, after the evaluation's inner steps: a vmap over tasks can return
        these (an adaptive controller's test adapts each flight's model once), where it cannot a closure."""
        return self.adapted_weights(params, support_x, support_y, self.eval_inner_steps)

    def predict_adapted(self, weights: dict, x):
        return self.forward(weights, x)

    def adapt(self, params: dict, support_x, support_y):
        return partial(self.predict_adapted, self.adapted(params, support_x, support_y))

    def task_policy(self, params, support_x, support_y, query_x):
        """The policy adapted now on the query observations, for the divergence TRPO bounds."""
        return self.forward(self.adapted_weights(params, support_x, support_y, self.inner_steps), query_x)

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        first_order = self.first_order or (step is not None and step < self.first_order_until)
        steps = self.inner_steps if step is not None else self.eval_inner_steps
        weights = self.step_weights(step, steps)
        params = self.task_start(params, support_x, support_y)
        fast, outer_loss = self.inner_params(params), 0.0
        for i, fast in enumerate(self.inner_loop(params, support_x, support_y, steps, first_order)):
            if i < steps - 1 and weights[i]:
                outer_loss = outer_loss + weights[i] * self.objective.loss(self.forward(fast, query_x), query_y)
        prediction = self.forward(fast, query_x)
        loss = self.objective.loss(prediction, query_y)
        return outer_loss + weights[-1] * loss, loss, self.objective.score(prediction, query_y)

    def step_weights(self, step: int | None, steps: int) -> list:
        """Weights of the query loss after each inner step: the last step only, or MAML++'s annealed mix. The
        floor of 0.03 / steps on the early steps is the MAML++ reference code's (`get_per_step_loss_importance_vector`
        in AntreasAntoniou/HowToTrainYourMAMLPytorch), which the paper's text leaves out."""
        if step is None or not self.multi_step_loss or step >= self.multi_step_loss:
            return [0.0] * (steps - 1) + [1.0]
        early = max((1.0 - step / self.multi_step_loss) / steps, 0.03 / steps)
        return [early] * (steps - 1) + [1.0 - early * (steps - 1)]
