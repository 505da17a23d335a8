"""TRPO (Schulman et al. 2015) as a meta-optimizer, the outer step of MAML's reinforcement-learning experiments.

It needs more than a gradient: the KL between the sampling policy and the current one as a function of the
parameters, for its curvature and to check each candidate step. So its `step` takes a closure that returns
(loss, divergence) at the parameters' current values; `engine.MetaStep` builds it from the algorithm's
`meta_loss` and `meta_divergence`.
"""

import torch

from metaexp import distributed
from metaexp.algorithms.base import Algorithm
from metaexp.errors import MetaexpError


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
        defaults = dict(
            max_kl=max_kl, cg_iters=cg_iters, damping=damping, backtrack=backtrack, line_search_steps=line_search_steps
        )
        super().__init__(params, defaults)

    def step(self, closure):
        """One trust-region step; returns the fraction of the full step taken (0.0 when the search failed)."""
        group = self.param_groups[0]
        params = [p for g in self.param_groups for p in g["params"]]
        with torch.enable_grad():
            loss, divergence = closure()
            gradient = flat(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True), params)
            divergence_gradient = flat(
                torch.autograd.grad(divergence, params, create_graph=True, allow_unused=True), params
            )

        def fisher(vector):
            with torch.enable_grad():
                product = torch.autograd.grad(
                    divergence_gradient @ vector, params, retain_graph=True, allow_unused=True
                )
            return flat(product, params) + group["damping"] * vector

        direction = conjugate_gradient(fisher, gradient, group["cg_iters"])
        curvature = direction @ fisher(direction)
        full_step = direction * torch.sqrt(2 * group["max_kl"] / curvature.clamp_min(1e-12))
        start = [p.detach().clone() for p in params]
        with torch.no_grad():
            for i in range(group["line_search_steps"]):
                fraction = group["backtrack"] ** i
                assign(params, start, -fraction * full_step)
                new_loss, new_divergence = closure()
                if new_loss < loss and new_divergence <= group["max_kl"]:
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
    if type(algorithm).task_divergence is Algorithm.task_divergence:
        algorithm.task_divergence(None, None, None, None, None, None)  # raises its own explanation


def flat(tensors, params) -> torch.Tensor:
    """One vector of per-parameter tensors (None, for a parameter the function does not use, as zeros)."""
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, params)])


def assign(params, start, offset: torch.Tensor) -> None:
    """Set `params` to `start` plus the flat `offset`."""
    at = 0
    for p, s in zip(params, start):
        p.copy_(s + offset[at : at + p.numel()].view_as(p))
        at += p.numel()


def conjugate_gradient(product, target: torch.Tensor, iterations: int, tolerance: float = 1e-10) -> torch.Tensor:
    """x with product(x) ~= target, from x = 0 (Shewchuk's conjugate gradient, as TRPO's reference code)."""
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
    return x
