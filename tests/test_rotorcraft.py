"""The planar rotorcraft and its adaptive controller (metaexp/datasets/rotorcraft.py): the equations against a
direct computation, batched flights against one at a time, the adaptation law against a known disturbance,
and the closed loop's gradient against finite differences in float64."""

import math

import pytest
import torch

from metaexp.datasets.rotorcraft import (
    DRAG,
    GRAVITY,
    Gains,
    acceleration,
    fly,
    wind_drag,
)

DT = 0.01


def no_features(q: torch.Tensor, dq: torch.Tensor) -> torch.Tensor:
    """Feedback alone: nothing to adapt (f_hat = 0)."""
    return q.new_zeros(*q.shape[:-1], 1)


def sine_references(amplitudes: torch.Tensor, periods: torch.Tensor, times: torch.Tensor) -> tuple:
    """Smooth references r_i(t) = a_i sin(2 pi t / T_i) with their derivatives, `[..., T, 3]` each: these tests'
    references (the paper's are random minimum-snap splines)."""
    omega = 2 * math.pi / periods.unsqueeze(-2)
    phase = omega * times.unsqueeze(-1)
    a = amplitudes.unsqueeze(-2)
    return a * torch.sin(phase), a * omega * torch.cos(phase), -a * omega.square() * torch.sin(phase)


def direct_drag(q, dq, w):
    """f_ext of one state, written out from the paper's equations."""
    phi = float(q[2])
    rotation = torch.tensor([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]], dtype=q.dtype)
    v = rotation.T @ torch.stack([dq[0] - w, dq[1]])
    body = -torch.tensor(DRAG, dtype=q.dtype) * v * v.abs()
    return torch.cat([rotation @ body, torch.zeros(1, dtype=q.dtype)])


def test_drag_and_plant_equal_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    q, dq, u = (torch.randn(7, 3, generator=g, dtype=torch.float64) for _ in range(3))
    wind = torch.rand(7, generator=g, dtype=torch.float64) * 10
    batched = wind_drag(q, dq, wind)
    for i in range(7):
        f = direct_drag(q[i], dq[i], wind[i])
        torch.testing.assert_close(batched[i], f)
        phi = float(q[i, 2])
        b = torch.tensor(
            [[-math.sin(phi), 0, math.cos(phi)], [math.cos(phi), 0, math.sin(phi)], [0, 1, 0]], dtype=torch.float64
        )
        expected = f + b @ u[i] - torch.tensor([0.0, GRAVITY, 0.0], dtype=torch.float64)
        torch.testing.assert_close(acceleration(q[i], dq[i], u[i], f), expected)
    # Still air on a body at rest: no drag; a body moving with the wind: none either.
    assert (
        wind_drag(q[:1], torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)).abs().max() == 0
    )
    with_wind = torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64)
    assert wind_drag(q[:1], with_wind, torch.tensor([3.0], dtype=torch.float64)).abs().max() == 0


def references(batch=(), steps=301, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    amplitudes = torch.rand(*batch, 3, generator=g, dtype=dtype) * torch.tensor([2.0, 2.0, 0.3], dtype=dtype)
    periods = 2 + 4 * torch.rand(*batch, 3, generator=g, dtype=dtype)
    return sine_references(amplitudes, periods, torch.arange(steps, dtype=dtype) * DT)


def test_a_batch_of_flights_equals_each_flown_alone():
    winds = torch.tensor([[0.0, 4.0], [7.5, 2.0]], dtype=torch.float64)
    reference = references(batch=(2, 2), steps=101)
    gains = Gains.scaled(dtype=torch.float64)

    def features(q, dq):
        return torch.tanh(torch.cat([q, dq], -1))

    together = fly(reference, features, gains, lambda q, dq: wind_drag(q, dq, winds), DT)
    for i in range(2):
        for j in range(2):
            alone = fly(
                tuple(x[i, j] for x in reference), features, gains, lambda q, dq: wind_drag(q, dq, winds[i, j]), DT
            )
            torch.testing.assert_close(together.q[i, j], alone.q, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(together.u[i, j], alone.u, rtol=1e-12, atol=1e-12)


def test_the_adaptation_law_learns_a_constant_disturbance_that_feedback_alone_cannot_cancel():
    push = torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64)

    def constant(q, dq):
        return torch.zeros_like(q) + push

    def bias(q, dq):
        return q.new_ones(*q.shape[:-1], 1)

    reference = references(steps=1001)
    adaptive = fly(reference, bias, Gains.scaled(dtype=torch.float64), constant, DT)
    fixed = fly(reference, no_features, Gains.scaled(dtype=torch.float64), constant, DT)
    late = slice(-200, None)  # the last 2 s of 10
    adaptive_error = (adaptive.q - adaptive.r)[late].norm(dim=-1).mean()
    fixed_error = (fixed.q - fixed.r)[late].norm(dim=-1).mean()
    assert fixed_error > 0.1  # feedback alone leaves a steady offset of about |push| / (K Lambda)
    assert adaptive_error < 0.05 * fixed_error


def test_the_closed_loop_gradient_equals_finite_differences_in_float64():
    reference = references(steps=81)
    wind = torch.tensor(5.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    weights = 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)

    def cost(w, rate):
        gains = Gains(rate * torch.eye(3, dtype=torch.float64), 10 * torch.eye(3, dtype=torch.float64),
                      10 * torch.eye(3, dtype=torch.float64))  # fmt: skip
        features = lambda q, dq: torch.tanh(torch.cat([q, dq], -1) @ w.T)  # noqa: E731
        return fly(reference, features, gains, lambda q, dq: wind_drag(q, dq, wind), DT).rms_error()

    w, rate = weights.clone().requires_grad_(), torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    grad_w, grad_rate = torch.autograd.grad(cost(w, rate), (w, rate))
    step = 1e-6
    for index in [(0, 0), (1, 3), (3, 5)]:
        bumped = [weights.clone(), weights.clone()]
        bumped[0][index] += step
        bumped[1][index] -= step
        numeric = (cost(bumped[0], torch.tensor(1.0, dtype=torch.float64))
                   - cost(bumped[1], torch.tensor(1.0, dtype=torch.float64))) / (2 * step)  # fmt: skip
        assert float(grad_w[index]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-9)
    one = torch.tensor(1.0, dtype=torch.float64)
    numeric = (cost(weights, one + step) - cost(weights, one - step)) / (2 * step)
    assert float(grad_rate) == pytest.approx(float(numeric), rel=1e-5, abs=1e-9)


def test_one_rk4_step_per_control_step_matches_a_fine_integration():
    """RK4 at the control step (dt = 0.01) against 8 substeps per control step, wind drag, 2 s (over 10 s and 50
    substeps the positions differ by 6e-8 here)."""
    reference = references(batch=(4,), steps=201)
    winds = torch.tensor([0.0, 3.0, 6.0, 9.0], dtype=torch.float64)

    def features(q, dq):
        return torch.tanh(torch.cat([q, dq], -1))

    gains = Gains.scaled(dtype=torch.float64)
    coarse, fine = (
        fly(reference, features, gains, lambda q, dq: wind_drag(q, dq, winds), DT, substeps=n) for n in (1, 8)
    )
    assert (coarse.q - fine.q).norm(dim=-1).max() < 1e-6
    assert (coarse.q - fine.q).norm(dim=-1).max() > 0, "the substeps were taken"
