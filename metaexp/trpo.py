"""TRPO (Schulman et al. 2015) as a meta-optimizer, the outer step of MAML's reinforcement-learning experiments.

It needs more than a gradient: the KL between the sampling policy and the current one as a function of the
parameters, to check each candidate step, and that KL's curvature. So its `step` takes two closures, the loss
and the divergence at the parameters' current values, and a function from tangents (one tensor per parameter)
to the divergence's Hessian times them; `engine.MetaStep` builds the three from the algorithm's `meta_loss`,
`meta_divergence` and `divergence_curvature`.
"""

import math

import torch

from metaexp import distributed
from metaexp.algorithms.base import Algorithm
from metaexp.errors import MetaexpError
from metaexp.settings import at_least, within


class TRPO(torch.optim.Optimizer):
    needs_divergence = True

    def __init__(
        self,
        params,
        max_kl: float = 0.01,
        cg_iters: int = 10,
        damping: float = 1e-5,
        backtrack: float = 0.5,
        line_search_steps: int = 15,
    ):
        at_least("optim.max_kl", max_kl, 0)
        at_least("optim.cg_iters", cg_iters, 1, whole=True)
        at_least("optim.line_search_steps", line_search_steps, 1, whole=True)
        within("optim.damping", damping, 0, math.inf)
        within("optim.backtrack", backtrack, 0, 1)
        defaults = dict(
            max_kl=max_kl, cg_iters=cg_iters, damping=damping, backtrack=backtrack, line_search_steps=line_search_steps
        )
        super().__init__(params, defaults)

    def step(self, objective, divergence, curvature):
        """One trust-region step; returns the fraction of the full step taken (0.0 when the search failed)."""
        group = self.param_groups[0]
        params = [p for g in self.param_groups for p in g["params"]]
        with torch.enable_grad():
            loss = objective()
            gradient = flat(torch.autograd.grad(loss, params, allow_unused=True), params)

        def fisher(vector):
            tangents = torch.split(vector, [p.numel() for p in params])
            product = curvature([t.view_as(p) for t, p in zip(tangents, params)])
            return flat(product, params) + group["damping"] * vector

        direction, residual = conjugate_gradient(fisher, gradient, group["cg_iters"])
        # x^T F x without another product: F x = gradient - residual (the residual CG carries; 1 of 11 products).
        curvature = direction @ (gradient - residual)
        full_step = direction * torch.sqrt(2 * group["max_kl"] / curvature.clamp_min(1e-12))
        start = [p.detach().clone() for p in params]
        with torch.no_grad():
            for i in range(group["line_search_steps"]):
                fraction = group["backtrack"] ** i
                assign(params, start, -fraction * full_step)
                # The divergence costs an adaptation too: it is only computed for a step that lowers the loss.
                if objective() < loss and divergence() <= group["max_kl"]:
                    return fraction
            assign(params, start, torch.zeros_like(full_step))
        return 0.0


def check_fits(algorithm, cuda_graph: bool) -> None:
    """Refuse, before anything is written, what TRPO cannot run: a task or algorithm without the divergence it
    bounds, a captured CUDA graph or several processes (its line search runs as long as the data says)."""
    if cuda_graph or distributed.world_size() > 1:
        raise MetaexpError(
            "optim=trpo runs a line search whose length depends on the data, which a captured CUDA graph or "
            "several processes cannot follow. Set trainer.cuda_graph=false and run one process, or use "
            "optim=adam."
        )
    if not hasattr(algorithm.objective, "divergence"):
        raise MetaexpError(
            f"optim=trpo bounds how far a policy moves (a KL divergence), and {algorithm.objective.task} tasks "
            f"have no policy. Use optim=adam, or a reinforcement-learning data set (dataset=navigation2d)."
        )
    if type(algorithm).task_policy is Algorithm.task_policy:
        algorithm.task_policy(None, None, None, None)  # raises its own explanation


def flat(tensors, params) -> torch.Tensor:
    """One vector of per-parameter tensors (None, for a parameter the function does not use, as zeros)."""
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, params)])


def assign(params, start, offset: torch.Tensor) -> None:
    """Set `params` to `start` plus the flat `offset`."""
    at = 0
    for p, s in zip(params, start):
        p.copy_(s + offset[at : at + p.numel()].view_as(p))
        at += p.numel()


def conjugate_gradient(product, target: torch.Tensor, iterations: int, tolerance: float = 1e-10) -> tuple:
    """(x, target - product(x)) with product(x) ~= target, from x = 0 (Shewchuk's conjugate gradient, as TRPO's
    reference code)."""
    x, residual = torch.zeros_like(target), target.clone()
    direction, norm = residual.clone(), residual @ residual
    for _ in range(iterations):
        if norm < tolerance:
            break
        step = product(direction)
        alpha = norm / (direction @ step)
        x, residual = x + alpha * direction, residual - alpha * step
        new_norm = residual @ residual
        direction, norm = residual + (new_norm / norm) * direction, new_norm
    return x, residual
