"""TRPO (Schulman et al. 2015) as a meta-optimizer, the outer step of MAML's reinforcement-learning experiments.

It needs more than a gradient: the KL between the sampling policy and the current one as a function of the
parameters, to check each candidate step, and that KL's curvature. So its `step` takes two closures, the loss
and the divergence at the parameters' current values, and a function from tangents (one tensor per parameter)
to the divergence's Hessian times them; `engine.MetaStep` builds the three from the algorithm's `meta_loss`
and this module's `meta_divergence` and `divergence_curvature`, which need of an algorithm only its
`task_policy` (one task's adapted policy on its query observations).
"""

import math

import torch
from torch.func import vmap

from metaexp.errors import MetaexpError
from metaexp.schema import at_least, within


class TRPO(torch.optim.Optimizer):
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
        along = direction @ (gradient - residual)
        full_step = direction * torch.sqrt(2 * group["max_kl"] / along.clamp_min(1e-12))
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


def check_fits(algorithm) -> None:
    """Refuse, before anything is written, a task or algorithm without the divergence TRPO bounds (what it can
    be combined with, `engine.check_combination` decides)."""
    if algorithm.objective.divergence is None:
        raise MetaexpError(
            f"optim=trpo bounds how far a policy moves (a KL divergence), and {algorithm.objective.task} tasks "
            f"have no policy. Use optim=adam, or a reinforcement-learning data set (dataset=navigation2d)."
        )
    if not algorithm.adapts_policies:
        raise MetaexpError(
            f"optim=trpo bounds the change of the adapted policy, which {type(algorithm).__name__} does not define. "
            f"Use algorithm=maml or metasgd with it, or optim=adam."
        )


def adapted_policies(algorithm, params: dict, batch, chunk: int | None = None) -> torch.Tensor:
    """Every task's adapted policy on its query observations, `[B, n, 2 * actions]` (means, log-stds)."""
    task = vmap(algorithm.task_policy, in_dims=(None, 0, 0, 0), chunk_size=chunk)
    return task(params, batch.support_x, batch.support_y, batch.query_x)


def divergence_of(algorithm, policies: torch.Tensor, batch) -> torch.Tensor:
    return vmap(algorithm.objective.divergence)(policies, batch.query_y).mean()


def meta_divergence(algorithm, params: dict, batch, chunk: int | None = None) -> torch.Tensor:
    """The mean over the meta-batch of the divergence between each query set's sampling policy and the policy
    adapted now: the constraint of the trust region."""
    return divergence_of(algorithm, adapted_policies(algorithm, params, batch, chunk), batch)


def divergence_curvature(algorithm, params: dict, batch, chunk: int | None = None):
    """v -> the Hessian of `meta_divergence` times v (dicts shaped as `params`), at the current parameters.

    It is the Gauss-Newton product J^T H J v (J: the Jacobian of the adapted policies' outputs, H: the
    divergence's Hessian in those outputs), which is exact here: the query sets were sampled by the policies
    adapted from these parameters, where the divergence's gradient in the outputs is zero, so the term with
    the network's second derivatives vanishes. J v comes from differentiating J^T u, linear in a probe u,
    with respect to u; both graphs are built once, so each product is two backward passes (faster than
    forward-mode J v or differentiating the divergence's gradient again: benchmarks/bench_rl.py).
    """
    names = [name for name, weight in params.items() if weight.requires_grad]
    with torch.enable_grad():
        outputs = adapted_policies(algorithm, params, batch, chunk)
        probe = torch.zeros_like(outputs, requires_grad=True)
        transposed = torch.autograd.grad(
            outputs, [params[k] for k in names], probe, create_graph=True, allow_unused=True
        )
        point = outputs.detach().requires_grad_()
        slope = torch.autograd.grad(divergence_of(algorithm, point, batch), point, create_graph=True)[0]
    moving = [(name, t) for name, t in zip(names, transposed) if t is not None and t.requires_grad]

    def product(tangents: dict) -> dict:
        pushed = torch.autograd.grad(
            [t for _, t in moving], probe, [tangents[name] for name, _ in moving], retain_graph=True
        )[0]
        curved = torch.autograd.grad(slope, point, pushed, retain_graph=True)[0]
        products = torch.autograd.grad(
            outputs, [params[k] for k in names], curved, retain_graph=True, allow_unused=True
        )
        return dict(zip(names, products))

    return product


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
