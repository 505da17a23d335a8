"""Adaptive control on the meta-learning data path (Richards et al., RSS 2021): a task is one wind, and what a
meta-learner learns is the regressor y(q, dq) that the adaptive controller's online law dA/dt = Gamma s y^T
weighs into its disturbance estimate f_hat = A y. Two views of the same task family:

- `TransitionSampler` (the regression view): a task is one training flight; support and query sets are its
  transitions (q, dq) -> f_ext. Meta ridge regression (ACMRR) learns y so that a per-wind least-squares fit of
  A on a few transitions predicts the rest.
- `ClosedLoopSampler` (the control view): a task is a (model, reference) pair; the per-task loss is the
  tracking cost of the adaptive controller flying the reference on that model. The model of each training
  flight's wind is a network fitted to that flight (the authors' ensemble: the true dynamics stay unknown to
  the meta-learner), and the meta-learner differentiates the flight itself.

Both test the same way (`ControlSampler.test`): the controller flies the test references in the true wind
with the algorithm's y inside it, under each gain setting, beside the PID baseline (y = 1) on the same flights.
"""

import math
import re
from functools import cached_property
from typing import Callable

import torch

from metaexp.datasets.rotorcraft import (
    FLOWN_ATTITUDE,
    SHAPES,
    Flights,
    Gains,
    fly,
    integral_features,
    network,
    rk4_step,
    unflatten,
    wind_drag,
)
from metaexp.datasets.splines import spline_references
from metaexp.errors import MetaexpError
from metaexp.objectives import CONTROL, DISTURBANCE, mean_ci95
from metaexp.samplers import TaskBatch, TaskSampler, TestResult, refuse_episode_files
from metaexp.schema import at_least, within


# The authors' four test gain settings (Lambda, K, Gamma), multiples of I; the first is a report's score.
FOUR_GAINS = ((1, 10, 10), (1, 1, 1), (1, 1, 10), (1, 10, 1))


def pool_draw(pool: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` of `pool` items without replacement (all of them, in order, when `count` >= `pool`)."""
    if count >= pool:
        return torch.arange(pool)
    return torch.randperm(pool, generator=generator)[:count]


class ControlSampler(TaskSampler):
    """What both views share: the sub-sample of `trajectories` (M) training flights chosen by `seed`, the
    gains the test flies with, and the test protocol.

    `gains` lists the test's (Lambda, K, Gamma) settings, each a multiple of the identity (the authors' four:
    Lambda 1, K and Gamma 1 or 10); the report's score is the first, the others sit beside it in `by_gains`."""

    objective = CONTROL
    outputs = 3
    per_split = True  # training and validation hold out different flights of one data set
    label_format, report_format = "M{trajectories}", "M{trajectories}"

    @classmethod
    def test_overrides(cls, name: str) -> list | None:
        """M is how much a run trained on, not a test setting: a published `M10` is the standard test of the run
        that trained on M = 10 (each M is a preset of its own)."""
        return [] if re.fullmatch(r"M\d+", name) else None

    def __init__(
        self,
        data,
        trajectories: int = 10,
        seed: int = 0,
        gains=FOUR_GAINS,
        split: str = "train",
        device="cpu",
    ):
        at_least("sampler.trajectories", trajectories, 2, whole=True)
        self.gains = [tuple(float(g) for g in setting) for setting in gains]
        for setting in self.gains:
            if len(setting) != 3 or min(setting) <= 0:
                raise MetaexpError(
                    f"sampler.gains has {list(setting)}; each setting is three positive numbers (Lambda, K, Gamma), "
                    f"multiples of the identity, e.g. sampler.gains=[[1,10,10]]. Gains that are not positive make "
                    f"the controller unstable or the adaptation law diverge."
                )
        self.data, self.trajectories, self.seed, self.device = data, trajectories, seed, torch.device(device)
        self.split, self.test_split = split, split == "test"

    def subsample(self):
        """The M training flights of this seed (the same for the train and validation samplers)."""
        total = len(self.data.wind)
        if self.trajectories > total:
            raise MetaexpError(
                f"sampler.trajectories={self.trajectories} but the data set has {total} training flights. Lower "
                f"sampler.trajectories or raise dataset.trajectories."
            )
        chosen = torch.randperm(total, generator=torch.Generator().manual_seed(self.seed))[: self.trajectories]
        return type(self.data)(*(x[chosen] if torch.is_tensor(x) else x for x in self.data))

    def bind(self, algorithm, params: dict, inner_steps) -> None:
        if not (algorithm.flies or algorithm.adapts_models):
            raise MetaexpError(
                f"{type(algorithm).__name__} neither learns an adaptive controller's regressor nor adapts a model "
                f"of the disturbance that the controller could fly with. Use algorithm=acmrr, control_oriented, "
                f"maml, anil or metasgd on dataset=rotorcraft."
            )
        self.algorithm, self.params = algorithm, params

    def test(self, score: Callable, options, dataset, generator: torch.Generator) -> TestResult:
        """The test flights in the true wind, with the algorithm's features and each gain setting (and its own
        learned gains, where it learns them), and the PID baseline on the same flights."""
        refuse_episode_files(options)
        flights = dataset.split("test")
        count = min(options.episodes, len(flights.wind))
        reference = tuple(x[:count].to(self.device) for x in flights.reference)
        wind = flights.wind[:count].to(self.device)
        params = {k: v.detach() for k, v in self.params.items()}
        method = type(self.algorithm).__name__.lower()
        regressor, prior = self.controller_parts(params, reference, wind, flights.dt)
        fixed = [(f"{r:g}/{k:g}/{g:g}", Gains.scaled(r, k, g)) for r, k, g in self.gains]
        flights_to_fly = [(name, gains, method, regressor, prior) for name, gains in fixed]
        flights_to_fly += [(name, gains, "pid", integral_features, None) for name, gains in fixed]
        learned = self.algorithm.learned_gains(params)
        if learned is not None:
            flights_to_fly.append(("learned", learned, method, regressor, None))
        rows, errors = [], []
        with torch.no_grad():
            for name, gains, method, regressor, prior in flights_to_fly:
                gains = Gains(*(x.to(self.device) for x in gains))
                flight = fly(reference, regressor, gains, lambda q, dq: wind_drag(q, dq, wind), flights.dt, prior=prior)
                errors.append(flight.rms_error().float().cpu())
                mean, ci95 = mean_ci95(errors[-1].tolist())
                effort = flight.rms_control().float().mean().item()
                rows.append({"gains": name, "method": method, "mean": mean, "ci95": ci95, "rms_control": effort})
        return TestResult(errors[0], None, {"by_gains": rows, "references": count}, metric=CONTROL.metric)

    def controller_parts(self, params: dict, reference: tuple, wind: torch.Tensor, dt: float) -> tuple:
        """(regressor y, prior model) the test flies with. A control algorithm supplies y. A few-shot regression
        algorithm (MAML, ANIL, Meta-SGD) supplies a disturbance model instead: adapted, per test flight, on
        the first `shots` transitions of a PID flight along the same reference in the same wind (recent
        transitions of that wind), it is added to f_hat, and the integral term adapts on top of it."""
        if self.algorithm.flies:
            return self.algorithm.regressor(params), None
        shots = self.shots  # a regression algorithm trains on sampler=transitions only
        warm = fly(tuple(x[:, : shots + 1] for x in reference), integral_features, Gains.scaled(),
                   lambda q, dq: wind_drag(q, dq, wind), dt)  # fmt: skip
        recorded = Flights(warm.q, warm.dq, warm.u, wind, dt)
        weights = torch.func.vmap(self.algorithm.adapted, in_dims=(None, 0, 0))(
            params, recorded.states(), recorded.disturbance()
        )
        model = torch.func.vmap(self.algorithm.predict_adapted)
        return integral_features, lambda q, dq: model(weights, torch.cat([q, dq], -1).unsqueeze(-2)).squeeze(-2)


class TransitionSampler(ControlSampler):
    """The regression view. A task is one of the M flights and its transitions (q, dq) -> f_ext. With no
    `window` (the authors' ACMRR): `shots` transitions drawn at random from the first `train_fraction` of its
    samples (shuffled in time) are the support set, and all of that part the query set in training, the rest
    in validation. With a `window`: `shots` consecutive transitions from a random time are the support set and
    the `window` after them the query set (recent transitions of a wind, then later ones), drawn within the
    first `train_fraction` of each flight in training and the rest in validation."""

    view = "transitions"
    objective = DISTURBANCE

    def __init__(
        self,
        data,
        trajectories: int = 10,
        seed: int = 0,
        shots: int = 562,
        train_fraction: float = 0.75,
        window: int | None = None,
        gains=FOUR_GAINS,
        split: str = "train",
        device="cpu",
    ):
        super().__init__(data, trajectories, seed, gains, split, device)
        at_least("sampler.shots", shots, 1, whole=True)
        within("sampler.train_fraction", train_fraction, 0.01, 0.99)
        if window is not None:
            at_least("sampler.window", window, 1, whole=True)
        self.shots, self.train_fraction, self.window = shots, train_fraction, window
        if self.test_split:
            return
        flights = self.subsample()
        x, y = flights.states(), flights.disturbance()
        if window is None:  # shuffled in time, once per flight
            order = torch.stack([
                torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(self.seed * 1000 + i))
                for i in range(len(x))
            ])  # fmt: skip
            x, y = (t.gather(1, order.unsqueeze(-1).expand_as(t)) for t in (x, y))
        cut = int(train_fraction * x.shape[1])
        needed = shots + (window or 0)
        if needed > min(cut, x.shape[1] - cut if window else cut):
            raise MetaexpError(
                f"sampler.shots={shots}{f' + sampler.window={window}' if window else ''} transitions do not fit in "
                f"a flight's {cut} training (or {x.shape[1] - cut} validation) transitions. Lower them, or raise "
                f"dataset.duration."
            )
        part = slice(None, cut) if split == "train" else slice(cut, None)
        self.x, self.y = x[:, part].to(self.device), y[:, part].to(self.device)
        self.train_x, self.train_y = x[:, :cut].to(self.device), y[:, :cut].to(self.device)

    def describe(self) -> str:
        drawn = f"the {self.window} after them" if self.window else "the loss on the rest"
        return (
            f"{self.trajectories} flights, one wind each: {self.shots} transitions (q, dq) -> f_ext fit, {drawn}; "
            f"all flights per step when trainer.meta_batch >= {self.trajectories}"
        )

    def sample(self, meta_batch: int, generator: torch.Generator) -> TaskBatch:
        tasks = pool_draw(self.trajectories, meta_batch, generator).to(self.device)
        if self.window:
            span = self.shots + self.window
            start = torch.randint(self.x.shape[1] - span + 1, (len(tasks), 1), generator=generator).to(self.device)
            rows = start + torch.arange(span, device=self.device)
            x, y = (t[tasks].gather(1, rows.unsqueeze(-1).expand(-1, -1, t.shape[-1])) for t in (self.x, self.y))
            return TaskBatch(x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :])
        x, y = self.train_x[tasks], self.train_y[tasks]
        keys = torch.rand(x.shape[:2], generator=generator).to(self.device)
        support = keys.argsort(-1)[:, : self.shots]
        sx = x.gather(1, support.unsqueeze(-1).expand(-1, -1, 6))
        sy = y.gather(1, support.unsqueeze(-1).expand(-1, -1, 3))
        if self.split == "train":
            return TaskBatch(sx, sy, x, y)
        return TaskBatch(sx, sy, self.x[tasks], self.y[tasks])


def fit_ensemble(flights, epochs: int, generator: torch.Generator, l2: float = 1e-4, lr: float = 1e-2,
                 train_fraction: float = 0.75, batch_fraction: float = 0.25) -> torch.Tensor:  # fmt: skip
    """One model per flight, fitted to predict each next state from the last through the known plant
    (RK4 with f_ext the model, u held) as the authors' ensemble: Adam on batches of `batch_fraction` of the
    first `train_fraction` of the transitions (shuffled in time), `epochs` passes, each model's weights kept
    where its held-out loss was lowest (checked once a pass). Returns the flat weights `[M, P]`."""
    m = len(flights.wind)
    x, x_next = flights.states(), torch.cat([flights.q[:, 1:], flights.dq[:, 1:]], -1)
    u = flights.u[:, :-1]
    order = torch.stack([torch.randperm(x.shape[1], generator=generator) for _ in range(m)])
    x, x_next, u = (t.gather(1, order.unsqueeze(-1).expand_as(t)) for t in (x, x_next, u))
    cut = int(train_fraction * x.shape[1])
    batch = int(batch_fraction * cut)
    flat = torch.cat([0.1 * torch.randn(m, math.prod(s), generator=generator) for s in SHAPES], -1)
    flat.requires_grad_()
    optimizer = torch.optim.Adam([flat], lr=lr)
    best, best_loss = flat.detach().clone(), torch.full((m,), math.inf)

    def losses(weights, rows):
        weights = unflatten(weights)
        state, target, held = x[:, rows], x_next[:, rows], u[:, rows]
        q, dq = rk4_step(
            state[..., :3], state[..., 3:], held, lambda q, dq: network(weights, torch.cat([q, dq], -1)), flights.dt
        )
        return (torch.cat([q, dq], -1) - target).square().sum((1, 2))

    held_out = torch.arange(cut, x.shape[1])
    for _ in range(epochs):
        shuffled = torch.randperm(cut, generator=generator)
        for start in range(0, cut - batch + 1, batch):
            rows = shuffled[start : start + batch]
            loss = (losses(flat, rows) + l2 * flat.square().sum(-1)).sum() / batch
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            now = losses(flat, held_out)
            better = now < best_loss
            best[better], best_loss[better] = flat.detach()[better], now[better]
    return best


class ClosedLoopSampler(ControlSampler):
    """The control view. A task is a pair: a model of one training flight's wind (the ensemble, fitted once per
    seed and M) and a reference of `duration` s; the algorithm flies the reference on the model and its loss
    is the flight's cost. `train_fraction` of the models and of the `references` train, the rest validate (the
    authors: 10 references of 5 s, 75% / 25%; 1,000 ensemble epochs)."""

    view = "closed_loop"
    ensembles = {}  # fitted ensembles, per (flights, seed, M, epochs): the train and val samplers share one

    def __init__(
        self,
        data,
        trajectories: int = 10,
        seed: int = 0,
        references: int = 10,
        duration: float = 5.0,
        train_fraction: float = 0.75,
        ensemble_epochs: int = 1000,
        gains=FOUR_GAINS,
        split: str = "train",
        device="cpu",
    ):
        super().__init__(data, trajectories, seed, gains, split, device)
        at_least("sampler.references", references, 2, whole=True)
        at_least("sampler.duration", duration, 0)
        at_least("sampler.ensemble_epochs", ensemble_epochs, 1, whole=True)
        within("sampler.train_fraction", train_fraction, 0.01, 0.99)
        self.references, self.duration, self.ensemble_epochs = references, duration, ensemble_epochs
        if self.test_split:
            return
        self.train_fraction = train_fraction

    @cached_property
    def pairs(self) -> tuple:
        """(models `[m, P]`, references `[k, T, 9]`) of this split, made at the first draw (fitting the ensemble
        takes minutes: a run refused for its other settings does not wait for it)."""
        generator, data = torch.Generator().manual_seed(self.seed), self.data
        # The flights' winds and shape name the data set (an address could be reused by another one).
        key = (tuple(data.wind.tolist()), tuple(data.q.shape), self.seed, self.trajectories, self.ensemble_epochs)
        if key not in self.ensembles:
            self.ensembles[key] = fit_ensemble(
                self.subsample(), self.ensemble_epochs, torch.Generator().manual_seed(self.seed)
            )
        models = self.ensembles[key][torch.randperm(self.trajectories, generator=generator)]
        flown = spline_references(self.references, self.duration, data.dt, generator, FLOWN_ATTITUDE)
        reference = torch.cat(flown, -1).float()
        keep_models = max(1, int(self.train_fraction * self.trajectories))
        keep_refs = max(1, int(self.train_fraction * self.references))
        training = self.split == "train"
        part = slice(None, keep_models) if training else slice(keep_models, None)
        refs = slice(None, keep_refs) if training else slice(keep_refs, None)
        return models[part].to(self.device), reference[refs].to(self.device)

    def describe(self) -> str:
        models, references = (len(x) for x in self.pairs)
        return (f"{models} wind models x {references} references of {self.duration:g} s flown in closed loop; all "
                f"{models * references} pairs per step when trainer.meta_batch >= {models * references}")  # fmt: skip

    def sample(self, meta_batch: int, generator: torch.Generator) -> TaskBatch:
        models, references = self.pairs
        count = len(references)
        pairs = pool_draw(len(models) * count, meta_batch, generator).to(self.device)
        model, reference = models[pairs // count], references[pairs % count]
        return TaskBatch(model, model.new_zeros(len(pairs), 1), reference, reference[..., :3])
