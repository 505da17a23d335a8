"""What every algorithm shares: its parameters, the vmap over tasks, and the checks against its backbone."""

from functools import partial

import torch
from torch import nn
from torch.func import grad, vmap

from metaexp.errors import MetaexpError
from metaexp.backbones import embed
from metaexp.objectives import CLASSIFICATION, CONTROL, DISTURBANCE, Objective
from metaexp.samplers import TaskBatch


NATIVE_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class Algorithm:
    """A meta-learning method as pure functions of (meta-parameters, one task), vmapped over the meta-batch.

    The contract a subclass keeps:

    - `task_loss(params, support_x, support_y, query_x, query_y, step)` returns (the scalar to differentiate,
      the query loss, the query score) for ONE task. `step` is the meta-training step, or None at evaluation
      (then use the evaluation settings, e.g. more inner steps). It runs under `vmap`: no in-place updates of
      inputs, no Python branching on tensor values, no `.item()`.
    - `adapt(params, support_x, support_y)` returns a function from query inputs to predictions, for one task.
    - `params` is a flat dict: the backbone's weights by `named_parameters()` name, and the algorithm's own
      learnables under `meta.` (learned inner rates, a logit scale); `init_params` creates both.

    A new method in eight lines (first-order MAML with a fixed inner rate):

        class FirstOrderMAML(Algorithm):
            def task_loss(self, params, support_x, support_y, query_x, query_y, step):
                def support_loss(w):
                    return self.objective.loss(predict(self.model, w, support_x), support_y)
                grads = grad(support_loss)(params)
                fast = {k: w - 0.4 * grads[k].detach() for k, w in params.items()}
                prediction = predict(self.model, fast, query_x)
                loss = self.objective.loss(prediction, query_y)
                return loss, loss, self.objective.score(prediction, query_y)
    """

    uses_head = True
    classification_only = False
    # True where the meta-step changes as training goes (MAML++ schedules): a captured CUDA graph cannot follow.
    changes_during_training = False
    # Inner steps in training and at evaluation (from test.inner_steps); None for the methods without an inner loop.
    inner_steps = eval_inner_steps = None
    # True where `adapted_weights` can adapt a policy to trajectories (reinforcement-learning task families) and
    # `task_policy(params, support_x, support_y, query_x)` returns one task's adapted policy on its queries.
    adapts_policies = False
    # False where the backbone's weights are not the meta-parameters by their own names (MetaNet's twins), so
    # test.norm=training cannot run the backbone alone over training images.
    training_norm = True
    # True where trainer.compile=auto may compile the meta-loss: its compiled speed was measured to gain (MAML).
    compiles = False
    # True where the algorithm learns an adaptive controller's regressor (`ControlAlgorithm`): the only kind that
    # adaptive-control task families take, and the only tasks it takes.
    flies = False
    # The sampler views (`TaskSampler.view`) it trains on: "" is a task family's plain sampler (episodes,
    # regression points, rollouts), `transitions` adaptive control's regression view.
    views = ("", "transitions")
    # True where `adapted(params, support_x, support_y)` returns the adapted weights as a dict and
    # `predict_adapted(weights, x)` predicts with them (the gradient-based methods): a control test adapts a
    # disturbance model once per flight through them.
    adapts_models = False
    # True where the outer loss is the mean of the tasks' own (this `meta_loss`), so the engine may take its
    # gradient a chunk of tasks at a time; False where a term is added once per meta-batch.
    separable = True

    def __init__(self, model: nn.Module, objective: Objective):
        self.model, self.objective = model, objective
        self.check_objective(objective)
        native = [name for name, m in model.named_modules() if isinstance(m, NATIVE_BATCH_NORM)]
        if native:
            raise MetaexpError(
                f"The backbone uses torch's own batch norm ({', '.join(native[:3])}). Under torch.func's vmap its "
                f"running statistics cannot be updated, and its second-order gradients come out wrong without an "
                f"error (a 4.5e-3 relative error measured against a per-task loop). Use "
                f"metaexp.backbones.layers.BatchNorm(channels) instead: the same normalisation over each task's own "
                f"batch, written with plain ops, exact under vmap."
            )
        if self.uses_head and not isinstance(model.head, nn.Linear):
            raise MetaexpError(
                f"{type(self).__name__} adapts the backbone's linear head, but this backbone has none "
                f"(backbone.out_features=null). Set backbone.out_features, or pick protonet/matchingnet/metaoptnet."
            )

    @classmethod
    def check_objective(cls, objective: Objective) -> None:
        """Refuse tasks this algorithm cannot learn (a class-level check: the CLI runs it before building)."""
        if (objective is CONTROL and not cls.flies) or (cls.flies and objective not in (CONTROL, DISTURBANCE)):
            raise MetaexpError(
                f"{cls.__name__} learns {'an adaptive controller' if cls.flies else 'from support sets'} and the "
                f"tasks are {objective.task} ({objective.metric}). Closed-loop tasks (sampler=closed_loop) take "
                f"algorithm=control_oriented; the transitions of dataset=rotorcraft (sampler=transitions) take "
                f"acmrr, maml, anil or metasgd; acmrr and control_oriented take no other task family."
            )
        if cls.classification_only and objective is not CLASSIFICATION:
            raise MetaexpError(
                f"{cls.__name__} classifies by comparing embeddings and cannot learn {objective.task} tasks. Pick a "
                f"gradient-based algorithm (maml, metasgd) for them, or a classification data set "
                f"(dataset=omniglot, dataset=image_folder, ...) for {cls.__name__}."
            )

    def check_sampler(self, sampler) -> None:
        """Refuse, before anything is written, a sampler view this algorithm does not train on, or tasks whose
        shape it cannot take (MetaNet's support chunks must divide the support set)."""
        if sampler.view not in self.views:
            plain = ["a task family's own sampler (episodic, regression, rollouts)"] if "" in self.views else []
            wanted = " or ".join(plain + [f"sampler={v}" for v in self.views if v])
            given = f"sampler={sampler.view}" if sampler.view else "a task family's own sampler"
            raise MetaexpError(
                f"{type(self).__name__} trains on {wanted}; the sampler is {type(sampler).__name__} ({given}). "
                f"Pick {'one of those' if ' or ' in wanted else 'that'}."
            )

    def init_params(self) -> dict:
        """Meta-parameters: the backbone's weights (less the head if unused), plus the algorithm's own."""
        return {
            k: p.detach().clone()
            for k, p in self.model.named_parameters()
            if self.uses_head or not k.startswith("head.")
        }

    def model_params(self, params: dict) -> dict:
        return {k: v for k, v in params.items() if not k.startswith("meta.")}

    def meta_loss(self, params: dict, batch: TaskBatch, step: int | None = 0, chunk: int | None = None):
        """(outer loss to differentiate, per-task query losses [B], per-task scores [B]) for a meta-batch, vmapped
        over the tasks `chunk` at a time (None: all at once)."""
        task = partial(self.task_loss, step=step)
        outer_losses, losses, scores = vmap(task, in_dims=(None, 0, 0, 0, 0), chunk_size=chunk)(params, *batch)
        return outer_losses.mean(), losses.detach(), scores.detach()

    def evaluate(self, params: dict, batch: TaskBatch, chunk: int | None = None):
        """Per-task query losses and scores after adaptation with the evaluation settings."""
        with torch.no_grad():
            _, losses, scores = self.meta_loss(params, batch, step=None, chunk=chunk)
        return losses, scores

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        raise NotImplementedError

    def adapt(self, params: dict, support_x, support_y):
        """A function from one task's query inputs to predictions, after adapting to its support set."""
        raise NotImplementedError

    def learned_gains(self, params: dict):
        """The adaptive controller's (Lambda, K, Gamma) this algorithm learned, or None where it learns none."""
        return None


def ridge_weights(z: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """The ridge-regression weights `[d, outputs]` from rows `z` `[n, d]` to `targets` `[n, outputs]`, solved
    in the dual ((n x n): z^T (z z^T + ridge I)^-1 targets) when there are fewer rows than features, else in the
    primal ((d x d): (z^T z + ridge I)^-1 z^T targets); the two are equal."""
    n, d = z.shape
    if n < d:
        eye = torch.eye(n, dtype=z.dtype, device=z.device)
        return z.T @ torch.linalg.solve(z @ z.T + ridge * eye, targets)
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    return torch.linalg.solve(z.T @ z + ridge * eye, z.T @ targets)


class ControlAlgorithm(Algorithm):
    """Base of the adaptive-control meta-learners: what they learn is the regressor y(q, dq) of the controller's
    disturbance estimate f_hat = A y (the backbone's features of (q, dq)), and optionally its gains."""

    uses_head = False
    flies = True
    training_norm = False
    separable = False  # the weights' penalty is added once per meta-batch

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def regressor(self, params: dict):
        """y(q, dq) `[..., p]`, the features the adaptive law weighs."""
        return lambda q, dq: embed(self.model, params, torch.cat([q, dq], -1))

    def penalty(self, params: dict) -> torch.Tensor:
        """The squared norm of the regressor's weights (not of the learned gains)."""
        return sum(w.square().sum() for k, w in params.items() if not k.startswith("meta."))


def sgd(loss, weights: dict, rate, steps: int, first_order: bool = False):
    """The inner loop: `steps` plain gradient steps on `loss(weights)`, `rate(name, i)` the step size of weight
    `name` at step i; yields the weights after each step. `first_order` cuts the second-order terms."""
    for i in range(steps):
        grads = grad(loss)(weights)
        weights = {k: w - rate(k, i) * (grads[k].detach() if first_order else grads[k]) for k, w in weights.items()}
        yield weights


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
        logits = self.adapt(params, support_x, support_y)(query_x)
        loss = self.objective.loss(logits, query_y)
        return loss, loss, self.objective.score(logits, query_y)

    def adapt(self, params: dict, support_x, support_y):
        # Support and queries pass the backbone together, as in training: batch norm uses their joint statistics.
        def predict(query_x):
            z = embed(self.model, params, torch.cat([support_x, query_x]))
            support_z, query_z = z[: len(support_x)], z[len(support_x) :]
            return self.logits(params, support_z, one_hot(support_y, self.ways, z.dtype), query_z)

        return predict

    def logits(self, params, support_z, support_onehot, query_z):
        raise NotImplementedError
