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
from typing import Callable, NamedTuple

import torch

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

    def rms_error(self) -> torch.Tensor:
        """Per flight, the RMS over time of the tracking error's norm, positions and velocities together."""
        error = torch.cat([self.q - self.r, self.dq - self.dr], -1)
        return error.square().sum(-1).mean(-1).sqrt()

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


def fly(
    reference: tuple, features: Callable, gains: Gains, disturbance: Callable, dt: float, substeps: int = 1
) -> Flight:
    """Fly the references `(r, dr, ddr)`, each `[..., T, 3]` at control steps `dt`, from rest on them, with
    `f_hat = A y(q, dq)` and `features(q, dq) -> y [..., p]`; `disturbance(q, dq)` is the true f_ext. The plant
    takes `substeps` RK4 steps per control step (to measure the integrator's error)."""
    r, dr, ddr = reference
    q, dq = r[..., 0, :], dr[..., 0, :]
    y = features(q, dq)
    estimate = q.new_zeros(*q.shape, y.shape[-1])  # A
    u, s = control(q, dq, r[..., 0, :], dr[..., 0, :], ddr[..., 0, :], matvec(estimate, y), gains)
    rate = (gains.adaptation @ s.unsqueeze(-1)) * y.unsqueeze(-2)  # dA = Gamma s y^T
    path = [(q, dq, u)]
    for t in range(1, r.shape[-2]):
        for _ in range(substeps):
            q, dq = rk4_step(q, dq, u, disturbance, dt / substeps)
        y = features(q, dq)
        e_now, de_now = q - r[..., t, :], dq - dr[..., t, :]
        s_now = de_now + matvec(gains.rate, e_now)
        new_rate = (gains.adaptation @ s_now.unsqueeze(-1)) * y.unsqueeze(-2)
        estimate = estimate + dt * (rate + new_rate) / 2  # trapezoidal rule
        rate = new_rate
        u, _ = control(q, dq, r[..., t, :], dr[..., t, :], ddr[..., t, :], matvec(estimate, y), gains)
        path.append((q, dq, u))
    q, dq, u = (torch.stack(parts, -2) for parts in zip(*path))
    return Flight(q, dq, u, r, dr)


def no_features(q: torch.Tensor, dq: torch.Tensor) -> torch.Tensor:
    """The PID baseline's regressor: nothing to adapt (f_hat = 0)."""
    return q.new_zeros(*q.shape[:-1], 1)


def sine_references(amplitudes: torch.Tensor, periods: torch.Tensor, times: torch.Tensor) -> tuple:
    """Smooth references r_i(t) = a_i sin(2 pi t / T_i) with their derivatives, `[..., T, 3]` each, for tests
    and benchmarks (the paper's are random minimum-snap splines)."""
    omega = 2 * math.pi / periods.unsqueeze(-2)
    phase = omega * times.unsqueeze(-1)
    a = amplitudes.unsqueeze(-2)
    return a * torch.sin(phase), a * omega * torch.cos(phase), -a * omega.square() * torch.sin(phase)
