"""Adaptive control as a task family (metaexp/control.py, metaexp/datasets/splines.py, the acmrr and
control_oriented algorithms): the references against their constraints and optimality, the training data
against the true drag, the ridge head against a direct solve, the batched closed-loop meta-loss against its
per-task form, a control run resumed bit-identically, its evaluation, and the refusals of what cannot fly."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, metrics, run_inline, straight_and_resumed
from metaexp.algorithms.base import ridge_weights
from metaexp.datasets.rotorcraft import SHAPES, RotorcraftWind, network, unflatten, wind_drag
from metaexp.datasets.splines import falling, min_snap, random_splines, sample_splines

# A rotorcraft small enough for tests: 6 flights of 2 s, 4 test references of 1 s; M = 4 flights.
SMALL_DATA = ["dataset=rotorcraft", "dataset.trajectories=6", "dataset.duration=2.0", "dataset.test_references=4",
              "dataset.test_duration=1.0", "sampler.trajectories=4", "trainer.device=cpu"]  # fmt: skip
TRANSITIONS = [*SMALL_DATA, "sampler.shots=20"]
CLOSED_LOOP = [*SMALL_DATA, "sampler=closed_loop", "algorithm=control_oriented", "sampler.references=4",
               "sampler.duration=0.3", "sampler.ensemble_epochs=3", "trainer.steps=4", "trainer.meta_batch=4",
               "trainer.val_every=2", "trainer.val_tasks=8", "trainer.log_every=1"]  # fmt: skip


def piece_cost(coefficients, durations, smooth):
    """The integral of the squared `smooth`-th time derivative, by a fine midpoint rule per piece."""
    tau = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000
    fall = falling(coefficients.shape[-1] - 1, smooth, torch.float64)[smooth]
    powers = (torch.arange(coefficients.shape[-1]) - smooth).clamp(min=0).to(torch.float64)
    derivative = (coefficients.unsqueeze(-2) * fall * tau.unsqueeze(-1) ** powers).sum(-1)
    return (derivative.square().mean(-1) / durations ** (2 * smooth - 1)).sum(-1)


def test_minimum_snap_pieces_pass_the_knots_at_rest_smoothly_and_at_least_cost():
    g = torch.Generator().manual_seed(0)
    knots = torch.randn(3, 6, generator=g, dtype=torch.float64)
    steps = torch.rand(3, 5, generator=g, dtype=torch.float64).add(0.5)
    times = torch.cat([torch.zeros(3, 1, dtype=torch.float64), steps.cumsum(1)], 1)
    coefficients = min_snap(knots, times, order=9, smooth=4)
    durations = times.diff(dim=-1)
    fall = falling(9, 4, torch.float64)

    def conditions(c, i):
        """The constraints of reference i, zero where they hold: through the knots, at rest at both ends,
        continuous derivatives 1..4 inside (in time units)."""
        parts = [c[:, 0] - knots[i, :-1], c.sum(-1) - knots[i, 1:]]
        for d in range(1, 5):
            start, end = c[:, d] * fall[d, d] / durations[i] ** d, (c * fall[d]).sum(-1) / durations[i] ** d
            parts += [start[:1], end[-1:]] if d < 4 else []
            parts.append(end[:-1] - start[1:])
        return torch.cat(parts)

    for i in range(3):
        assert conditions(coefficients[i], i).abs().max() < 1e-8
        # Every other spline under the same constraints costs more: steps along the constraints' null space
        # raise the cost, and its slope along them is zero at the solution.
        rows = torch.func.jacrev(conditions)(coefficients[i], i).reshape(-1, coefficients[i].numel())
        null = torch.linalg.svd(rows).Vh[torch.linalg.matrix_rank(rows) :]
        best = piece_cost(coefficients[i], durations[i], 4)
        for direction in null[:4]:
            direction = direction.reshape(coefficients[i].shape)
            up, down = (piece_cost(coefficients[i] + e * direction, durations[i], 4) for e in (1e-3, -1e-3))
            assert up > best and down > best
            assert abs(float(up - down)) < 1e-3 * float(up + down - 2 * best) + 1e-9 * float(best)


def test_sampled_references_have_the_derivatives_of_their_positions_and_start_at_rest():
    splines = random_splines(3, torch.Generator().manual_seed(1), duration=5.0, bound=(math.inf, math.inf, 0.7))
    t = torch.arange(0, 5.0001, 1e-3, dtype=torch.float64)
    r, dr, ddr = sample_splines(splines, t)
    assert r.shape == (3, len(t), 3) and r[:, 0].abs().max() == 0 and dr[:, 0].abs().max() < 1e-9
    torch.testing.assert_close((r[:, 2:] - r[:, :-2]) / 2e-3, dr[:, 1:-1], rtol=0, atol=1e-4)
    numeric = (dr[:, 2:] - dr[:, :-2]) / 2e-3
    torch.testing.assert_close(numeric[..., :2], ddr[:, 1:-1, :2], rtol=0, atol=2e-3)
    # The attitude's pieces are continuous to the second derivative only: the difference quotient across a
    # knot sees the jump of the third.
    torch.testing.assert_close(numeric[..., 2], ddr[:, 1:-1, 2], rtol=0, atol=5e-2)
    assert r[..., 2].abs().max() <= math.pi / 3


def test_training_flights_tilt_further_than_the_references_flown_at_test():
    """The authors draw the PD training flights' attitude knots within pi/3 and the test's within 0.7 pi/3: the
    training states cover attitudes (beyond 1 rad) that the test references seldom ask for."""
    data = RotorcraftWind(trajectories=200, duration=10.0, test_references=200, test_duration=10.0)
    beyond = [
        (phi.abs() > 1.0).double().mean()
        for phi in (data.split("train").q[..., 2], data.split("test").reference[0][..., 2])
    ]
    assert beyond[0] > 0.02 and beyond[1] < 0.005


def test_the_training_flights_show_the_true_drag():
    data = RotorcraftWind(trajectories=4, duration=2.0, test_references=2, test_duration=1.0)
    flights = data.split("train")
    assert flights.q.shape == (4, 201, 3)
    assert torch.equal(data.split("train").q, flights.q)  # generated once, the same for both splits
    true = wind_drag(flights.q[:, :-1], flights.dq[:, :-1], flights.wind.unsqueeze(-1))
    seen = flights.disturbance()
    # Forward Euler over one control step: the mean over the step, within a tenth of the drag's size here
    # (these 2 s flights fly fast; 5% on the default 30 s ones); closer still to the step's mean drag.
    assert (seen - true).abs().mean() < 0.1 * true.abs().mean()
    after = wind_drag(flights.q[:, 1:], flights.dq[:, 1:], flights.wind.unsqueeze(-1))
    assert (seen - (true + after) / 2).abs().mean() < 0.5 * (seen - true).abs().mean()
    assert 0 < flights.wind.min() and flights.wind.max() < 6
    test = data.split("test")
    assert test.reference[0].shape == (2, 101, 3) and test.wind.shape == (2,) and test.wind.max() < 10


def test_ridge_weights_in_the_primal_and_the_dual_are_one_solution():
    g = torch.Generator().manual_seed(0)
    for rows, features in ((40, 8), (5, 12)):
        z = torch.randn(rows, features, generator=g, dtype=torch.float64)
        y = torch.randn(rows, 3, generator=g, dtype=torch.float64)
        direct = torch.linalg.solve(z.T @ z + 0.3 * torch.eye(features, dtype=torch.float64), z.T @ y)
        torch.testing.assert_close(ridge_weights(z, y, 0.3), direct)


def test_the_ensemble_network_batched_equals_one_model_at_a_time():
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(4, sum(math.prod(s) for s in SHAPES), generator=g, dtype=torch.float64)
    x = torch.randn(4, 7, 6, generator=g, dtype=torch.float64)
    together = network(unflatten(flat), x)
    for i in range(4):
        w1, b1, w2, b2, a = unflatten(flat[i])
        alone = torch.stack([a @ torch.tanh(w2 @ torch.tanh(w1 @ p + b1) + b2) for p in x[i]])
        torch.testing.assert_close(together[i], alone)


def test_the_closed_loop_meta_loss_is_the_mean_of_its_tasks(tmp_path):
    from metaexp.configs import compose
    from metaexp.components import build, build_algorithm, build_sampler

    cfg = compose(CLOSED_LOOP)
    dataset = build(cfg.dataset, "dataset")
    sampler = build_sampler(cfg, dataset, "train", torch.device("cpu"))
    algorithm = build_algorithm(cfg, sampler)
    params = algorithm.init_params()
    params["meta.feedback"] = torch.tensor([0.3, 0.1, -0.2, 0.0, 0.2, 0.1])  # gains other than I
    batch = sampler.sample(4, torch.Generator().manual_seed(0))
    assert len(batch) == 4 and batch.query_x.shape == (4, 31, 9)
    outer, losses, scores = algorithm.meta_loss(params, batch)
    alone = [algorithm.task_loss(params, *(t[i] for t in batch), step=0) for i in range(4)]
    # The weights' penalty, per second flown by each task alone, is shared by the four in the meta-batch.
    penalty = algorithm.l2 * algorithm.penalty(params) / (31 * algorithm.dt)
    torch.testing.assert_close(outer, torch.stack([a[0] for a in alone]).mean() - penalty * 3 / 4)
    torch.testing.assert_close(scores, torch.stack([a[2] for a in alone]))
    gains = algorithm.learned_gains(params)
    assert torch.linalg.eigvalsh(gains.feedback).min() > 0
    torch.testing.assert_close(algorithm.learned_gains(algorithm.init_params()).rate, torch.eye(3))


def test_a_control_run_resumes_bit_identically_and_evaluates_with_every_gain_setting(tmp_path):
    a, b = straight_and_resumed(CLOSED_LOOP, tmp_path)
    assert a.keys() == b.keys() and "meta.adaptation" in a and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in metrics(tmp_path / "resumed") if r["split"] == "train"] == [1, 2, 3, 4]

    tested = run_inline("eval", f"checkpoint={tmp_path / 'resumed'}", "trainer.device=cpu", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    (report_file,) = (tmp_path / "resumed").glob("eval-test-M4-*.json")
    report = json.loads(report_file.read_text())
    assert report["metric"] == "rms_error" and not report["higher_is_better"] and report["episodes"] == 4
    rows = {(r["gains"], r["method"]): r for r in report["by_gains"]}
    fixed = {(g, m) for m in ("controloriented", "pid") for g in ("1/10/10", "1/1/1", "1/1/10", "1/10/1")}
    assert set(rows) == fixed | {("learned", "controloriented")}
    assert report["mean"] == rows["1/10/10", "controloriented"]["mean"]
    assert all(r["mean"] > 0 and r["rms_control"] > 0 for r in report["by_gains"])
    # Higher feedback gains track the same references more closely (PID, the same flights either way).
    assert rows["1/10/10", "pid"]["mean"] < rows["1/1/1", "pid"]["mean"]
    assert report["settings"]["label"] == "M4"


def test_acmrr_trains_on_transitions_and_its_features_fly(tmp_path):
    run = tmp_path / "acmrr"
    trained = run_inline("train", *TRANSITIONS, "algorithm=acmrr", "trainer.steps=3",
                         "trainer.meta_batch=4", "trainer.val_every=3", "trainer.val_tasks=4", f"hydra.run.dir={run}",
                         cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    val = [r for r in metrics(run) if r["split"] == "val"]
    assert val and val[-1]["mse"] > 0  # the disturbance's squared error on held-out transitions
    tested = run_inline("eval", f"checkpoint={run}", "trainer.device=cpu", "sampler.gains=[[1,10,10]]", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    (report_file,) = run.glob("eval-test-M4-*.json")
    report = json.loads(report_file.read_text())
    assert report["metric"] == "rms_error"
    assert [(r["gains"], r["method"]) for r in report["by_gains"]] == [("1/10/10", "acmrr"), ("1/10/10", "pid")]


@pytest.mark.parametrize(
    "overrides, named",
    [
        ([*TRANSITIONS, "algorithm=protonet"], "ProtoNet classifies by comparing embeddings"),
        ([*SMALL_DATA, "sampler=closed_loop", "algorithm=maml"], "MAML learns from support sets"),
        ([*SMALL_DATA, "algorithm=acmrr", "sampler=closed_loop"], "ACMRR trains on sampler=transitions"),
        ([*TRANSITIONS, "algorithm=control_oriented"], "ControlOriented trains on sampler=closed_loop"),
        ([*TRANSITIONS, "algorithm=acmrr", "sampler.gains=[[1,0,10]]"], "sampler.gains has [1.0, 0.0, 10.0]"),
        ([*TRANSITIONS, "algorithm=acmrr", "sampler.gains=[[1,-10,10]]"], "three positive numbers"),
    ],
)
def test_what_cannot_fly_is_refused_before_anything_runs(cli, tmp_path, overrides, named):
    result = cli("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert named in said and "Traceback" not in said
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_classification_algorithm_is_refused_on_control_tasks_and_control_algorithms_elsewhere(cli, tmp_path):
    result = cli("train", "algorithm=acmrr", f"hydra.run.dir={tmp_path / 'run'}")  # the sinusoid's regression
    assert result.returncode != 0 and "ACMRR learns an adaptive controller" in result.stdout + result.stderr


def test_windows_of_transitions_are_consecutive_and_their_queries_follow():
    from metaexp.control import TransitionSampler

    data = RotorcraftWind(trajectories=3, duration=4.0, test_references=2, test_duration=1.0)
    sampler = TransitionSampler(data.split("train"), trajectories=3, seed=1, shots=20, window=10)
    flights = sampler.subsample()
    states = flights.states()
    batch = sampler.sample(3, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (3, 20, 6) and batch.query_x.shape == (3, 10, 6)
    cut = int(0.75 * states.shape[1])
    for task in range(3):
        rows = torch.cat([batch.support_x[task], batch.query_x[task]])
        start = int((states[task] == rows[0]).all(-1).nonzero()[0])
        assert start + 30 <= cut  # training windows stay in the first 75% of the flight
        torch.testing.assert_close(rows, states[task, start : start + 30])
    val = TransitionSampler(data.split("val"), trajectories=3, seed=1, shots=20, window=10, split="val")
    first = val.sample(3, torch.Generator().manual_seed(0)).support_x[0, 0]
    assert int((states[0] == first).all(-1).nonzero()[0]) >= cut  # validation windows in the rest


def test_maml_adapts_a_disturbance_model_that_the_controller_flies_with(tmp_path):
    run = tmp_path / "maml"
    overrides = [*SMALL_DATA, "algorithm=maml", "backbone=disturbance", "sampler.shots=20", "sampler.window=10",
                 "trainer.steps=2", "trainer.meta_batch=4", "trainer.val_every=2", "trainer.val_tasks=4"]  # fmt: skip
    trained = run_inline("train", *overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    tested = run_inline("eval", f"checkpoint={run}", "trainer.device=cpu", "sampler.gains=[[1,10,10]]", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    (report_file,) = run.glob("eval-test-M4-*.json")
    rows = json.loads(report_file.read_text())["by_gains"]
    assert [(r["gains"], r["method"]) for r in rows] == [("1/10/10", "maml"), ("1/10/10", "pid")]
    assert rows[0]["mean"] != rows[1]["mean"]  # the adapted model changed the flights
    refused = run_inline("train", *overrides, "algorithm=reptile", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert refused.returncode != 0 and "Reptile neither learns" in refused.stdout + refused.stderr


def test_figures_without_the_flight_checkpoints_keep_figure_3_and_say_why(tmp_path):
    """ci/control_figures.py on the committed records, with no run checkpoints: the table and Figure 4 are
    made, Figure 3 is not touched, and one line names the checkpoints it would fly (it was a traceback)."""
    done = subprocess.run(
        [sys.executable, "ci/control_figures.py", str(tmp_path / "runs"), "--out", str(tmp_path), "--flight-seed", "1"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "| 1/10/10 | control-oriented | 10 |" in done.stdout
    assert "Figure 3 left as it was" in done.stdout
    assert str(tmp_path / "runs" / "seed1" / "acmrr_rotorcraft_m10" / "checkpoints" / "best.pt") in done.stdout
    assert (tmp_path / "control_figure4.png").stat().st_size > 0
    assert not (tmp_path / "control_figure3.png").exists()
