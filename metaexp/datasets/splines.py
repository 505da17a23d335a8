"""Random smooth reference trajectories, as the rotorcraft experiments of Richards et al. (RSS 2021) draw them:
a random walk of knots per axis, joined by piecewise polynomials of minimum integrated squared k-th derivative
(minimum snap for k = 4; Mellinger & Kumar, ICRA 2011) that pass through the knots, start and end at rest and
are continuous up to the k-th derivative. Each axis is an equality-constrained quadratic programme, solved
through its KKT system, batched over references."""

import math
from typing import NamedTuple

import torch


class Splines(NamedTuple):
    """References `[N]`: knot times `[N, K]` and, per axis, coefficients `[N, K - 1, order + 1]` of each
    piece's polynomial in its normalised time tau = (t - t_i) / (t_{i+1} - t_i)."""

    times: torch.Tensor
    coefficients: tuple


def falling(order: int, derivatives: int, dtype) -> torch.Tensor:
    """`[derivatives + 1, order + 1]`: the k-th derivative of tau^j is falling[k, j] tau^(j - k)."""
    j = torch.arange(order + 1, dtype=dtype)
    rows = [torch.ones_like(j)]
    for k in range(1, derivatives + 1):
        rows.append(rows[-1] * (j - k + 1).clamp(min=0))
    return torch.stack(rows)


def min_snap(knots: torch.Tensor, times: torch.Tensor, order: int, smooth: int) -> torch.Tensor:
    """Coefficients `[N, K - 1, order + 1]` of the pieces through `knots` `[N, K]` at `times` `[N, K]` that
    minimise the integral of the squared `smooth`-th time derivative, at rest (derivatives 1 .. smooth - 1
    zero) at both ends and continuous up to the `smooth`-th derivative at the inner knots."""
    n, k = knots.shape
    pieces, width, dtype = k - 1, order + 1, knots.dtype
    durations = times.diff(dim=-1)  # [N, P]
    fall = falling(order, smooth, dtype)
    start = fall * (torch.arange(width) == torch.arange(smooth + 1).unsqueeze(-1))  # derivatives at tau = 0
    end = fall  # at tau = 1
    rows, values = [], []

    def row(piece: int, coefficients: torch.Tensor) -> torch.Tensor:
        r = knots.new_zeros(n, pieces * width)
        r[:, piece * width : (piece + 1) * width] = coefficients
        return r

    for i in range(pieces):  # through the knots
        rows += [row(i, start[0].expand(n, -1)), row(i, end[0].expand(n, -1))]
        values += [knots[:, i], knots[:, i + 1]]
    for d in range(1, smooth):  # at rest at both ends
        rows += [row(0, start[d].expand(n, -1)), row(pieces - 1, end[d].expand(n, -1))]
        values += [knots.new_zeros(n)] * 2
    for i in range(pieces - 1):  # continuous time derivatives at the inner knots
        for d in range(1, smooth + 1):
            left = end[d] / durations[:, i : i + 1] ** d
            right = start[d] / durations[:, i + 1 : i + 2] ** d
            rows.append(row(i, left) - row(i + 1, right))
            values.append(knots.new_zeros(n))
    constraints, targets = torch.stack(rows, 1), torch.stack(values, 1)  # [N, C, P*W], [N, C]
    j = torch.arange(width, dtype=dtype)
    exponent = (j.unsqueeze(-1) + j - 2 * smooth + 1).clamp(min=1)
    base = torch.outer(fall[smooth], fall[smooth]) / exponent  # the integral over tau of the squared derivative
    cost = torch.block_diag(*[base] * pieces).expand(n, -1, -1).clone()
    scale = (durations ** (1 - 2 * smooth)).repeat_interleave(width, dim=1)  # dt = T dtau, d/dt = d/dtau / T
    cost = cost * scale.unsqueeze(-1)
    c = constraints.shape[1]
    kkt = torch.cat(
        [torch.cat([cost, constraints.transpose(1, 2)], 2), torch.cat([constraints, knots.new_zeros(n, c, c)], 2)],
        1,
    )
    rhs = torch.cat([knots.new_zeros(n, pieces * width), targets], 1)
    solution = torch.linalg.solve(kkt, rhs.unsqueeze(-1)).squeeze(-1)
    return solution[:, : pieces * width].reshape(n, pieces, width)


def random_splines(
    count: int,
    generator: torch.Generator,
    duration: float,
    bound: tuple,
    knots: int = 6,
    orders=(9, 9, 6),
    smooth=(4, 4, 2),
    step=(2.0, 2.0, math.pi / 6),
) -> Splines:
    """`count` references of `duration` seconds: knots a random walk from the origin with steps uniform in
    +-`step` per axis, clipped to +-`bound`, at times proportional to the distances between them."""
    dtype = torch.float64
    steps = 2 * torch.rand(count, knots - 1, len(orders), generator=generator, dtype=dtype) - 1
    walk = torch.cat(
        [torch.zeros(count, 1, len(orders), dtype=dtype), (steps * torch.tensor(step, dtype=dtype)).cumsum(1)], 1
    )
    limit = torch.tensor(bound, dtype=dtype)
    walk = torch.maximum(torch.minimum(walk, limit), -limit)
    lengths = walk.diff(dim=1).norm(dim=-1)
    times = torch.cat(
        [torch.zeros(count, 1, dtype=dtype), duration * lengths.cumsum(1) / lengths.sum(1, keepdim=True)], 1
    )
    times[:, -1] = duration
    coefficients = tuple(min_snap(walk[..., a], times, orders[a], smooth[a]) for a in range(len(orders)))
    return Splines(times, coefficients)


def sample_splines(splines: Splines, t: torch.Tensor, clip=(math.inf, math.inf, math.pi / 3)) -> tuple:
    """(r, dr, ddr), each `[N, T, axes]` in float64, at times `t` `[T]`; an axis beyond +-`clip` is held
    there (with zero derivatives), as the authors clip the attitude reference."""
    pieces = splines.times.shape[1] - 1
    index = torch.searchsorted(splines.times.contiguous(), t.expand(len(splines.times), -1).contiguous()) - 1
    index = index.clamp(0, pieces - 1)  # [N, T]
    start = splines.times.gather(1, index)
    length = splines.times.gather(1, index + 1) - start
    tau = (t - start) / length
    out = []
    for coefficients, limit in zip(splines.coefficients, clip):
        c = coefficients.gather(1, index.unsqueeze(-1).expand(-1, -1, coefficients.shape[-1]))  # [N, T, W]
        fall = falling(c.shape[-1] - 1, 2, c.dtype)
        powers = torch.arange(c.shape[-1], dtype=c.dtype)
        values = []
        for d in range(3):
            monomials = tau.unsqueeze(-1) ** (powers - d).clamp(min=0) * fall[d]
            values.append((c * monomials).sum(-1) / length**d)
        r, dr, ddr = values
        held = r.abs() > limit
        out.append((r.clamp(-limit, limit), dr.masked_fill(held, 0), ddr.masked_fill(held, 0)))
    return tuple(torch.stack(parts, -1) for parts in zip(*out))


def spline_references(count: int, duration: float, dt: float, generator: torch.Generator, attitude: float) -> tuple:
    """(r, dr, ddr) `[count, T, 3]` each in float64: `count` random references sampled every `dt` s, their attitude
    knots within +-`attitude` (the authors: pi/3 for the PD training flights, 0.7 pi/3 for the references the
    control-oriented method trains on and for the test's)."""
    times = torch.arange(round(duration / dt) + 1, dtype=torch.float64) * dt
    return sample_splines(random_splines(count, generator, duration, bound=(math.inf, math.inf, attitude)), times)
