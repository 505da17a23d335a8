"""The meta-step engine: compiled and bf16 steps agree with the eager fp32 step; bad settings are refused."""

import pytest
import torch

from metaexp.algorithms.acmrr import ACMRR
from metaexp.algorithms.maml import MAML
from metaexp.datasets.sinusoid import Sinusoid
from metaexp.engine import MetaStep, task_chunk_size
from metaexp.errors import MetaexpError
from metaexp.backbones.conv4 import Conv4
from metaexp.backbones.mlp import MLP
from metaexp.objectives import CLASSIFICATION, DISTURBANCE, REGRESSION
from metaexp.samplers import RegressionSampler, TaskBatch

from conftest import random_batch
from metaexp.trpo import TRPO


def run_steps(steps=3, **engine):
    torch.manual_seed(0)
    algorithm = MAML(MLP(), REGRESSION)
    params = {k: v.requires_grad_() for k, v in algorithm.init_params().items()}
    step = MetaStep(algorithm, params, torch.optim.Adam(params.values(), 1e-2), torch.device("cpu"), **engine)
    sampler, generator = RegressionSampler(Sinusoid(), 10, 10), torch.Generator().manual_seed(0)
    losses = [step(sampler.sample(25, generator), k)[0].mean().item() for k in range(steps)]
    return losses, {k: v.detach() for k, v in params.items()}


@pytest.mark.slow  # torch.compile compiles
def test_compiled_step_matches_eager():
    eager_losses, eager = run_steps()
    compiled_losses, compiled = run_steps(compile=True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert all(torch.allclose(eager[k], compiled[k], rtol=1e-4, atol=1e-6) for k in eager)


def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    def broken(function):
        def compiled(*args):
            raise RuntimeError("inductor: no C++ compiler\nmore detail")

        return compiled

    eager_losses, eager = run_steps()
    monkeypatch.setattr("metaexp.engine.torch.compile", broken)
    with caplog.at_level("WARNING", logger="metaexp.engine"):
        losses, params = run_steps(compile=True)
    assert losses == eager_losses and all(torch.equal(eager[k], params[k]) for k in eager)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "torch.compile failed (RuntimeError: inductor: no C++ compiler); this run goes on eagerly" == warning


class Plain:
    compiles = True


class Eager:
    compiles = False


@pytest.mark.parametrize(
    "setting, steps_left, parameters, device, algorithm, optimizer, expected, minutes",
    [
        ("auto", 60_000, 112_000, "cpu", Plain, torch.optim.Adam, True, None),  # MAML Conv-4's schedule
        ("auto", 60_000, 112_000, "cpu", Plain, torch.optim.Adam, True, 30),  # half an hour repays it
        ("auto", 60_000, 112_000, "cpu", Plain, torch.optim.Adam, False, 2),  # two minutes do not
        ("auto", 999, 112_000, "cpu", Plain, torch.optim.Adam, False, None),  # a short run does not compile
        ("auto", 60_000, 112_000, "cuda", Plain, torch.optim.Adam, False, None),  # not measured on a GPU yet
        ("auto", 70_000, 1_761, "cpu", Plain, torch.optim.Adam, False, None),  # the sinusoid MLP
        ("auto", 60_000, 112_000, "cpu", Eager, torch.optim.Adam, False, None),  # an algorithm that says no
        ("auto", 60_000, 112_000, "cpu", Plain, TRPO, False, None),  # TRPO's line search stays eager
        (True, 4, 1_761, "cpu", Eager, torch.optim.Adam, True, None),  # as given
        (False, 60_000, 112_000, "cpu", Plain, torch.optim.Adam, False, None),
    ],
)
def test_auto_compile_decisions(setting, steps_left, parameters, device, algorithm, optimizer, expected, minutes):
    from metaexp.engine import compile_choice

    compiled, why = compile_choice(
        setting, steps_left=steps_left, parameters=parameters, device=torch.device(device),
        algorithm=algorithm(), optimizer=optimizer.__new__(optimizer), minutes=minutes,
    )  # fmt: skip
    assert compiled is expected and why


def test_bf16_step_tracks_fp32():
    fp32_losses, fp32 = run_steps()
    bf16_losses, bf16 = run_steps(precision="bf16")
    assert bf16_losses == pytest.approx(fp32_losses, rel=0.05)
    assert bf16_losses != fp32_losses, "autocast should change the arithmetic"
    assert all(torch.isfinite(v).all() for v in bf16.values())


def test_task_chunks_give_the_same_meta_gradient():
    torch.manual_seed(0)
    algorithm = MAML(Conv4(5, hidden=8), CLASSIFICATION, inner_lr=0.4)
    params = {k: v.requires_grad_() for k, v in algorithm.init_params().items()}
    batch = random_batch(6, 5)
    grads = []
    for chunk in (None, 4):
        objective, _, _ = algorithm.meta_loss(params, batch, step=0, chunk=chunk)
        grads.append(torch.autograd.grad(objective, list(params.values())))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(*grads))
    assert task_chunk_size("auto", torch.device("cpu"), batch) == 4
    assert task_chunk_size("auto", torch.device("cuda"), batch) is None
    points = torch.rand(25, 10, 1)  # sinusoid tasks: too small for chunks to pay
    assert task_chunk_size("auto", torch.device("cpu"), TaskBatch(points, points, points, points)) is None


def test_a_meta_step_in_chunks_takes_each_chunks_backward_and_the_same_gradient():
    """The engine backpropagates a separable meta-loss a chunk at a time (5 tasks in chunks of 2: 2 + 2 + 1,
    each chunk's loss weighed by its share of the tasks), and a loss with a term per meta-batch (ACMRR's weight
    penalty) whole; the gradients are those of the whole meta-batch's loss."""
    torch.manual_seed(0)
    cases = [
        (MAML(Conv4(5, hidden=8), CLASSIFICATION, inner_lr=0.4), random_batch(5, 5), 3),
        (ACMRR(MLP(None, 6, hidden=(8,), flatten=False), DISTURBANCE), TaskBatch(
            torch.randn(5, 20, 6), torch.randn(5, 20, 3), torch.randn(5, 30, 6), torch.randn(5, 30, 3)), 1),
    ]  # fmt: skip
    for algorithm, batch, backwards in cases:
        params = {k: v.double().requires_grad_() for k, v in algorithm.init_params().items()}
        batch = batch.to(dtype=torch.float64)
        whole, losses, _ = algorithm.meta_loss(params, batch, step=0)
        expected = torch.autograd.grad(whole, list(params.values()))
        step = MetaStep(algorithm, params, torch.optim.SGD(params.values()), torch.device("cpu"))
        calls = []
        step.meta_loss = lambda *args: calls.append(len(args[1])) or algorithm.meta_loss(*args)
        chunked_losses, _ = step.backward(batch, step=0, chunk=2)
        assert len(calls) == backwards and sum(calls) == len(batch)
        assert torch.allclose(chunked_losses, losses.detach(), rtol=1e-12)
        for name, want in zip(params, expected):
            assert torch.allclose(params[name].grad, want, rtol=1e-9, atol=1e-12), name


def test_refused_settings():
    algorithm = MAML(MLP(), REGRESSION)
    params = {k: v.requires_grad_() for k, v in algorithm.init_params().items()}
    optimizer = torch.optim.Adam(params.values())
    with pytest.raises(MetaexpError, match="needs a CUDA device"):
        MetaStep(algorithm, params, optimizer, torch.device("cpu"), cuda_graph=True)
    with pytest.raises(MetaexpError, match="not one of fp32, bf16"):
        MetaStep(algorithm, params, optimizer, torch.device("cpu"), precision="fp8")


def test_confidence_interval_is_196_standard_errors():
    from metaexp.objectives import mean_ci95

    values = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(0.6)
    assert ci == pytest.approx(1.96 * values.double().std().item() / 5**0.5)
