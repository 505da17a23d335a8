"""Adaptive-control-oriented meta-learning (Richards, Azizan, Slotine & Pavone, RSS 2021): the controller's
regressor y(q, dq), and optionally its gains, are meta-trained by differentiating the closed loop itself. The
per-task loss is the cost of the adaptive controller flying one reference on one model of one wind,

    (1 / T) integral_0^T |e|^2 + |de|^2 + control |u|^2 dt,

through every RK4 step of the plant and every step of the adaptation law, so what is learned is what makes
the online adaptation track well, not what fits the disturbance best offline."""

from functools import partial

import torch

from metaexp.algorithms.base import ControlAlgorithm
from metaexp.datasets.rotorcraft import Gains, closed_loop_step, fly, modelled_drag, unflatten


def positive_definite(free: torch.Tensor) -> torch.Tensor:
    """L L^T `[3, 3]` from 6 free numbers: the lower triangle of L, its diagonal through exp (zeros give I)."""
    rows, cols = torch.tril_indices(3, 3)
    lower = free.new_zeros(3, 3).index_put((rows, cols), free)
    lower = lower - torch.diag(lower.diagonal()) + torch.diag(lower.diagonal().exp())
    return lower @ lower.T


class ControlOriented(ControlAlgorithm):
    """`learn_gains`: meta-train (Lambda, K, Gamma) too, from I (the authors' "ours (meta)"); otherwise fly
    training with `gains` (Lambda, K, Gamma multiples of I). `control` weighs the control effort against the
    time-averaged tracking error, and `l2` the features' squared weights per second flown by the meta-batch's
    tasks together (the authors: 1e-3 and 1e-4). `dt` is the data set's control step; `compile`
    compiles one control step (about 6x faster on a CPU, once compiled)."""

    views = ("closed_loop",)

    def __init__(self, model, objective, dt: float, learn_gains: bool = True, gains=(1.0, 10.0, 10.0),
                 control: float = 1e-3, l2: float = 1e-4, compile: bool = False):  # fmt: skip
        super().__init__(model, objective)
        self.dt, self.learn_gains, self.gains, self.control, self.l2 = dt, learn_gains, tuple(gains), control, l2
        self.advance = torch.compile(self.step, dynamic=False) if compile else self.step

    def init_params(self) -> dict:
        learned = {f"meta.{name}": torch.zeros(6) for name in Gains._fields} if self.learn_gains else {}
        return {**super().init_params(), **learned}

    def learned_gains(self, params: dict):
        if not self.learn_gains:
            return None
        return Gains(*(positive_definite(params[f"meta.{name}"]) for name in Gains._fields))

    def flight_gains(self, params: dict) -> Gains:
        return self.learned_gains(params) or Gains.scaled(*self.gains, dtype=next(iter(params.values())).dtype)

    def step(self, q, dq, u, estimate, rate, r, dr, ddr, *, params, model, gains):
        """One control step on the model of one wind: all tensors are arguments, so it compiles once."""
        wind = partial(modelled_drag, model)
        return closed_loop_step(q, dq, u, estimate, rate, r, dr, ddr, self.regressor(params), gains, wind, self.dt)

    def flight_cost(self, params: dict, models: torch.Tensor, references: torch.Tensor) -> tuple:
        """(tracking cost, control cost, RMS tracking error), each `[...]`, of flying `references` `[..., T, 9]`
        (r, dr, ddr) on the models of flat weights `models` `[..., P]`."""
        model, gains = unflatten(models), self.flight_gains(params)
        reference = references.split(3, -1)
        advance = partial(self.advance, params=params, model=model, gains=gains)
        flight = fly(reference, self.regressor(params), gains, partial(modelled_drag, model), self.dt, advance=advance)
        errors = flight.error().square().sum(-1)
        return errors.mean(-1), flight.u.square().sum(-1).mean(-1), errors.mean(-1).sqrt()

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        tracking, effort, rms = self.flight_cost(params, support_x, query_x)
        duration = query_x.shape[-2] * self.dt
        return tracking + self.control * effort + self.l2 * self.penalty(params) / duration, tracking, rms

    def meta_loss(self, params: dict, batch, step: int | None = 0, chunk: int | None = None):
        """The meta-batch flown together: the simulation is batched over its leading dimensions, one tensor op
        per step for all tasks (a vmap of 500 steps is several times slower). The flights' costs are averaged;
        the weights' penalty is added once and divided, as the authors', by the seconds flown per task times
        the tasks (so a meta-batch of one is `task_loss`)."""
        tracking, effort, rms = self.flight_cost(params, batch.support_x, batch.query_x)
        duration = batch.query_x.shape[-2] * self.dt
        outer = (tracking + self.control * effort).mean() + self.l2 * self.penalty(params) / (duration * len(batch))
        return outer, tracking.detach(), rms.detach()
