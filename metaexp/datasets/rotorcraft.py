"""A planar fully-actuated rotorcraft in wind, the system of Richards, Azizan, Slotine & Pavone, "Adaptive-
Control-Oriented Meta-Learning for Nonlinear Systems" (RSS 2021), and the adaptive tracking controller that
flies it, in torch: every function takes leading batch dimensions (references x winds), so one tensor op steps
them all, and all of it is differentiable, so a meta-learner can be trained through the closed loop.

The state is q = (x, y, phi) and dq. The plant is H ddq + C dq + g = B(phi) u + f_ext with H = I, C = 0,
g = (0, 9.81, 0) and B(phi) = [[-sin phi, 0, cos phi], [cos phi, 0, sin phi], [0, 1, 0]] (orthogonal, so
B^-1 = B^T). The task is the wind speed w: drag f_ext = -R (beta * v * |v|) with v = R^T (dx - w, dy), R the
rotation by phi, beta = (0.1, 1.0), and no torque.

The controller tracks a reference r(t) on s = de + Lambda e (e = q - r): tau = H dv + C v + g - f_hat - K s with
v = dr - Lambda e, u = B^-1 tau, f_hat = A y(q, dq), and the adaptation law dA/dt = Gamma s y^T integrated by the
trapezoidal rule, u held between control steps (a zero-order hold). The plant is integrated by fixed-step
RK4 at the control step (the authors integrate with an adaptive Dormand-Prince method between control steps).
"""

import math
from functools import partial
from typing import Callable, NamedTuple

import torch

from metaexp.datasets.splines import spline_references
from metaexp.schema import at_least

# The references' attitude knots stay within these bounds: the authors' generate_data.py draws the PD training
# flights' up to pi/3, test_all.py and train_ours.py the test's and the closed-loop training's up to 0.7 pi/3.
TRAINING_ATTITUDE, FLOWN_ATTITUDE = math.pi / 3, 0.7 * math.pi / 3

GRAVITY = 9.81
DRAG = (0.1, 1.0)


def actuation(phi: torch.Tensor) -> torch.Tensor:
    """B(phi) `[..., 3, 3]`."""
    s, c, zero, one = torch.sin(phi), torch.cos(phi), torch.zeros_like(phi), torch.ones_like(phi)
    rows = [torch.stack(r, -1) for r in ((-s, zero, c), (c, zero, s), (zero, one, zero))]
    return torch.stack(rows, -2)


def gravity(q: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(q) + q.new_tensor([0.0, GRAVITY, 0.0])


def wind_drag(q: torch.Tensor, dq: torch.Tensor, wind: torch.Tensor, drag=DRAG) -> torch.Tensor:
    """f_ext `[..., 3]` of wind speed `wind` `[...]` along x: quadratic drag in the body frame, no torque."""
    s, c = torch.sin(q[..., 2]), torch.cos(q[..., 2])
    rx, ry = dq[..., 0] - wind, dq[..., 1]  # the air's velocity relative to the body, inertial frame
    vx, vy = c * rx + s * ry, -s * rx + c * ry  # R^T (rx, ry)
    fx, fy = -drag[0] * vx * vx.abs(), -drag[1] * vy * vy.abs()
    return torch.stack([c * fx - s * fy, s * fx + c * fy, torch.zeros_like(fx)], -1)  # R (fx, fy), 0


def acceleration(q, dq, u, f_ext) -> torch.Tensor:
    """ddq of the plant (H = I, C = 0)."""
    return f_ext + (actuation(q[..., 2]) @ u.unsqueeze(-1)).squeeze(-1) - gravity(q)


def rk4_step(q, dq, u, disturbance: Callable, dt: float) -> tuple:
    """(q, dq) after `dt` with `u` held; `disturbance(q, dq)` is f_ext."""

    def derivative(state):
        position, velocity = state
        return velocity, acceleration(position, velocity, u, disturbance(position, velocity))

    k1 = derivative((q, dq))
    k2 = derivative((q + dt / 2 * k1[0], dq + dt / 2 * k1[1]))
    k3 = derivative((q + dt / 2 * k2[0], dq + dt / 2 * k2[1]))
    k4 = derivative((q + dt * k3[0], dq + dt * k3[1]))
    return tuple(x + dt / 6 * (a + 2 * b + 2 * c + d) for x, a, b, c, d in zip((q, dq), k1, k2, k3, k4))


class Gains(NamedTuple):
    """Lambda, K and Gamma, each `[3, 3]` and positive definite (the paper's default: I, 10 I, 10 I)."""

    rate: torch.Tensor  # Lambda
    feedback: torch.Tensor  # K
    adaptation: torch.Tensor  # Gamma

    @classmethod
    def scaled(cls, rate: float = 1.0, feedback: float = 10.0, adaptation: float = 10.0, dtype=torch.float32):
        eye = torch.eye(3, dtype=dtype)
        return cls(rate * eye, feedback * eye, adaptation * eye)


class Flight(NamedTuple):
    """A closed-loop simulation: positions, velocities, inputs and the reference, each `[..., T, 3]`."""

    q: torch.Tensor
    dq: torch.Tensor
    u: torch.Tensor
    r: torch.Tensor
    dr: torch.Tensor

    def error(self) -> torch.Tensor:
        """The tracking error, positions and velocities together, `[..., T, 6]`."""
        return torch.cat([self.q - self.r, self.dq - self.dr], -1)

    def rms_error(self) -> torch.Tensor:
        """Per flight, the RMS over time of the tracking error's norm."""
        return self.error().square().sum(-1).mean(-1).sqrt()

    def rms_control(self) -> torch.Tensor:
        return self.u.square().sum(-1).mean(-1).sqrt()


def matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


def control(q, dq, r, dr, ddr, f_hat, gains: Gains) -> tuple:
    """(u, s) of the adaptive tracking law."""
    e, de = q - r, dq - dr
    s = de + matvec(gains.rate, e)
    dv = ddr - matvec(gains.rate, de)
    tau = dv + gravity(q) - f_hat - matvec(gains.feedback, s)  # H = I, C = 0
    return matvec(actuation(q[..., 2]).transpose(-1, -2), tau), s  # B^-1 = B^T


def closed_loop_step(
    q, dq, u, estimate, rate, r, dr, ddr, features, gains: Gains, disturbance, dt, substeps=1, prior=None
):  # fmt: skip
    """One control step: the plant flies `dt` under the held `u` (`substeps` RK4 steps), the adaptation law
    integrates dA = Gamma s y^T by the trapezoidal rule, and the controller sets the next `u` from the
    reference `(r, dr, ddr)` at the new time, with f_hat = A y + prior(q, dq) (a model adapted beforehand, or
    none). Returns (q, dq, u, A, dA, e, de)."""
    for _ in range(substeps):
        q, dq = rk4_step(q, dq, u, disturbance, dt / substeps)
    y = features(q, dq)
    e, de = q - r, dq - dr
    new_rate = (gains.adaptation @ (de + matvec(gains.rate, e)).unsqueeze(-1)) * y.unsqueeze(-2)
    estimate = estimate + dt * (rate + new_rate) / 2
    f_hat = matvec(estimate, y) + (prior(q, dq) if prior else 0)
    u, _ = control(q, dq, r, dr, ddr, f_hat, gains)
    return q, dq, u, estimate, new_rate, e, de


def fly(
    reference: tuple, features: Callable, gains: Gains, disturbance: Callable, dt: float, substeps: int = 1,
    advance: Callable | None = None, prior: Callable | None = None,
) -> Flight:  # fmt: skip
    """Fly the references `(r, dr, ddr)`, each `[..., T, 3]` at control steps `dt`, from rest on them, with
    `f_hat = A y(q, dq)` and `features(q, dq) -> y [..., p]`; `disturbance(q, dq)` is the true f_ext. The plant
    takes `substeps` RK4 steps per control step (to measure the integrator's error). `prior(q, dq)`, where
    given, is added to f_hat. `advance(q, dq, u, A, dA, r, dr, ddr)` is `closed_loop_step` with the rest bound,
    or a function that computes the same (compiled)."""
    advance = advance or partial(
        closed_loop_step, features=features, gains=gains, disturbance=disturbance, dt=dt, substeps=substeps,
        prior=prior,
    )  # fmt: skip
    r, dr, ddr = reference
    q, dq = r[..., 0, :], dr[..., 0, :]
    y = features(q, dq)
    estimate = q.new_zeros(*q.shape, y.shape[-1])  # A
    f_hat = matvec(estimate, y) + (prior(q, dq) if prior else 0)
    u, s = control(q, dq, r[..., 0, :], dr[..., 0, :], ddr[..., 0, :], f_hat, gains)
    rate = (gains.adaptation @ s.unsqueeze(-1)) * y.unsqueeze(-2)  # dA = Gamma s y^T
    path = [(q, dq, u)]
    for t in range(1, r.shape[-2]):
        q, dq, u, estimate, rate, _, _ = advance(q, dq, u, estimate, rate, r[..., t, :], dr[..., t, :], ddr[..., t, :])
        path.append((q, dq, u))
    q, dq, u = (torch.stack(parts, -2) for parts in zip(*path))
    return Flight(q, dq, u, r, dr)


def track_pd(reference: tuple, disturbance: Callable, dt: float, kp: float = 10.0, kd: float = 0.1) -> Flight:
    """Fly `(r, dr, ddr)` with the feedback-linearising PD controller the authors' training data were flown by
    (tau = ddr - kp e - kd de + g, u = B^-1 tau; nothing cancels the wind), from rest on the reference."""
    r, dr, ddr = reference

    def pd(q, dq, t):
        tau = ddr[..., t, :] - kp * (q - r[..., t, :]) - kd * (dq - dr[..., t, :]) + gravity(q)
        return matvec(actuation(q[..., 2]).transpose(-1, -2), tau)

    q, dq = r[..., 0, :], dr[..., 0, :]
    path = [(q, dq, pd(q, dq, 0))]
    for t in range(1, r.shape[-2]):
        q, dq = rk4_step(q, dq, path[-1][2], disturbance, dt)
        path.append((q, dq, pd(q, dq, t)))
    q, dq, u = (torch.stack(parts, -2) for parts in zip(*path))
    return Flight(q, dq, u, r, dr)


def integral_features(q: torch.Tensor, dq: torch.Tensor) -> torch.Tensor:
    """The PID baseline's regressor, the constant 1: the adaptation law then integrates s, an integral term
    (the authors' PID: features tanh(0 x + inf))."""
    return q.new_ones(*q.shape[:-1], 1)


def network(weights: tuple, x: torch.Tensor) -> torch.Tensor:
    """The ensemble's model of one wind, f(x) = A tanh(W2 tanh(W1 x + b1) + b2) (no output bias, as the
    authors'), on points `x` `[..., n, 6]` for weights with the same leading dimensions (one model per flight)."""
    w1, b1, w2, b2, a = weights
    h = torch.tanh(x @ w1.mT + b1.unsqueeze(-2))
    h = torch.tanh(h @ w2.mT + b2.unsqueeze(-2))
    return h @ a.mT


def modelled_drag(weights: tuple, q: torch.Tensor, dq: torch.Tensor) -> torch.Tensor:
    """f_ext `[..., 3]` of one state per model, as `network` models it (a disturbance for `fly`)."""
    return network(weights, torch.cat([q, dq], -1)[..., None, :])[..., 0, :]


SHAPES = ((32, 6), (32,), (32, 32), (32,), (3, 32))  # the ensemble's weights, as the authors' 2 x 32 tanh


def unflatten(flat: torch.Tensor) -> tuple:
    """A model's weights from its flat vector `[..., P]`."""
    sizes = [math.prod(s) for s in SHAPES]
    return tuple(part.reshape(*flat.shape[:-1], *s) for part, s in zip(flat.split(sizes, -1), SHAPES))


def beta_order_statistic(count: int, a: int, b: int, generator: torch.Generator) -> torch.Tensor:
    """`count` draws of Beta(a, b) for whole a, b: the a-th smallest of a + b - 1 uniforms (exact, and drawn
    from `generator`, which torch's own Beta sampler takes none of)."""
    return torch.rand(count, a + b - 1, generator=generator, dtype=torch.float64).sort(-1).values[:, a - 1]


class Flights(NamedTuple):
    """Recorded flights `[N, T, 3]` each (q, dq, u at the control steps `dt`) and their winds `[N]`."""

    q: torch.Tensor
    dq: torch.Tensor
    u: torch.Tensor
    wind: torch.Tensor
    dt: float

    def disturbance(self) -> torch.Tensor:
        """f_ext `[N, T - 1, 3]` as the data show it (forward Euler, the authors' regression target):
        (dq_{t+1} - dq_t) / dt - B(phi_t) u_t + g; the plant's known part is H = I, C = 0."""
        q, u = self.q[:, :-1], self.u[:, :-1]
        return self.dq.diff(dim=1) / self.dt - matvec(actuation(q[..., 2]), u) + gravity(q)

    def states(self) -> torch.Tensor:
        """(q, dq) `[N, T - 1, 6]` before each transition."""
        return torch.cat([self.q[:, :-1], self.dq[:, :-1]], -1)


class TestFlights(NamedTuple):
    """The test protocol's references (r, dr, ddr) `[N, T, 3]` each and winds `[N]`, one wind per reference."""

    reference: tuple
    wind: torch.Tensor
    dt: float


class RotorcraftWind:
    """Adaptive control's task family: a task is one wind speed, blowing along x. The training split is
    `trajectories` flights of `duration` s by the PD controller along random minimum-snap references, one
    wind each from `wind_max` x Beta(*wind_beta) (the authors: 500 flights of 30 s, 6 Beta(5, 9)); the test split
    is `test_references` references of `test_duration` s, one wind each from `test_wind_max` x
    Beta(*test_wind_beta) (200 of 10 s, 10 Beta(5, 7): mostly stronger winds than any in training). Both are
    generated from `seed` in float64 and kept as float32; the samplers sub-sample the training flights."""

    def __init__(
        self,
        trajectories: int = 500,
        duration: float = 30.0,
        dt: float = 0.01,
        wind_max: float = 6.0,
        wind_beta=(5, 9),
        test_references: int = 200,
        test_duration: float = 10.0,
        test_wind_max: float = 10.0,
        test_wind_beta=(5, 7),
        seed: int = 0,
    ):
        at_least("dataset.trajectories", trajectories, 1, whole=True)
        at_least("dataset.test_references", test_references, 1, whole=True)
        for key, value in (("duration", duration), ("test_duration", test_duration), ("dt", dt)):
            at_least(f"dataset.{key}", value, 0)
        self.trajectories, self.duration, self.dt, self.seed = trajectories, duration, dt, seed
        self.wind_max, self.wind_beta = wind_max, tuple(wind_beta)
        self.test_references, self.test_duration = test_references, test_duration
        self.test_wind_max, self.test_wind_beta = test_wind_max, tuple(test_wind_beta)
        self.cache = {}

    def split(self, name: str):
        """`train` and `val`: the training flights (the samplers, told their split, hold some of each out);
        `test`: the test protocol's references and winds."""
        if name == "test":
            return self.cached("test", self.test_flights)
        return self.cached("train", self.flights)

    def cached(self, name: str, make: Callable):
        if name not in self.cache:
            self.cache[name] = make()
        return self.cache[name]

    def flights(self) -> Flights:
        generator = torch.Generator().manual_seed(self.seed)
        reference = spline_references(self.trajectories, self.duration, self.dt, generator, TRAINING_ATTITUDE)
        wind = self.wind_max * beta_order_statistic(self.trajectories, *self.wind_beta, generator)
        flown = track_pd(reference, lambda q, dq: wind_drag(q, dq, wind), self.dt)
        return Flights(flown.q.float(), flown.dq.float(), flown.u.float(), wind.float(), self.dt)

    def test_flights(self) -> TestFlights:
        generator = torch.Generator().manual_seed(self.seed + 20)  # the authors' offset: no training reference
        reference = spline_references(self.test_references, self.test_duration, self.dt, generator, FLOWN_ATTITUDE)
        wind = self.test_wind_max * beta_order_statistic(self.test_references, *self.test_wind_beta, generator)
        return TestFlights(tuple(x.float() for x in reference), wind.float(), self.dt)
