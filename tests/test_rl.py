"""Meta-RL on 2D navigation: the torch environment against a step-by-step computation, the linear baseline
against torch.linalg.lstsq, the vmapped policy-gradient inner step against a per-task loop in float64, the TRPO
step on a fixed batch, resume, evaluation's adaptation curve and the refusals of mismatched components."""

import json
import math

import pytest
import torch

from conftest import metrics, only_report, run_inline, straight_and_resumed
from metaexp.algorithms.maml import MAML
from metaexp.algorithms.metasgd import MetaSGD
from metaexp.backbones import predict
from metaexp.backbones.gaussian_policy import GaussianPolicy
from metaexp.datasets.navigation2d import Navigation2D
from metaexp.rollouts import RolloutSampler, baseline_features, fit_baseline, log_prob
from metaexp.objectives import REGRESSION
from metaexp.trpo import TRPO, conjugate_gradient, divergence_curvature, meta_divergence

# A short schedule: 2 goals x 3 trajectories of 15 steps, 4 meta-iterations.
SMALL = [
    "experiment=maml_navigation2d",
    "trainer.device=cpu",
    "trainer.steps=4",
    "trainer.meta_batch=2",
    "trainer.log_every=1",
    "trainer.val_every=2",
    "trainer.val_tasks=2",
    "sampler.trajectories=3",
    "dataset.horizon=15",
]


def test_navigation_steps_match_a_direct_computation():
    env = Navigation2D()
    goals = torch.tensor([[0.3, -0.2], [0.0, 0.0405]])
    state = env.reset(goals, 2, torch.Generator())
    actions = torch.tensor([[[2.0, -0.5], [0.3, 0.0]], [[0.0, 0.4], [-1.0, 7.0]]])
    following, reward, done = env.step(state, actions, goals)
    for task in range(2):
        for k in range(2):
            position = [0.0, 0.0]
            for axis in range(2):
                velocity = min(max(0.1 * float(actions[task, k, axis]), -0.1), 0.1)
                position[axis] += velocity
            distance = math.dist(position, goals[task].tolist())
            assert following[task, k].tolist() == pytest.approx(position, abs=1e-6)
            assert float(reward[task, k]) == pytest.approx(-distance, abs=1e-6)
            assert bool(done[task, k]) == (distance < 0.01)
    assert done.tolist() == [[False, False], [True, False]]  # (0, 0.04) is 0.0005 from its goal


def rightward(sampler: RolloutSampler):
    """(MAML, params) of a deterministic policy that moves 0.1 right a step, wired into `sampler`."""
    algorithm = MAML(GaussianPolicy(log_std=-20.0), sampler.objective, inner_lr=0.1)
    params = {k: torch.zeros_like(v) for k, v in algorithm.init_params().items()}
    params["head.bias"] = torch.tensor([1.0, 0.0])  # action (1, 0): 0.1 right per step
    params["log_std"] = torch.full((2,), -20.0)  # deterministic: the mean action
    sampler.bind(algorithm, params, 1)
    return algorithm, params


def test_finished_episodes_are_masked_and_stay_put():
    sampler = RolloutSampler(Navigation2D(horizon=6), trajectories=1)
    algorithm, params = rightward(sampler)
    goals = torch.tensor([[0.2, 0.0]])
    x, y = sampler.collect(goals, algorithm.model_params(params), torch.Generator(), shared=True)
    _, _, masks, rewards, _, _ = sampler.objective.unpack(y)
    assert masks[0].tolist() == [1, 1, 0, 0, 0, 0]  # done at step 2, within 0.01 of (0.2, 0)
    assert x[0, 2:, 0].tolist() == pytest.approx([0.2] * 4)
    assert float((rewards * masks).sum()) == pytest.approx(-0.1)


def test_a_budgeted_batch_is_whole_episodes_until_the_budget_the_last_one_cut():
    sampler = RolloutSampler(Navigation2D(horizon=6), trajectories=3, budget=10)
    algorithm, params = rightward(sampler)
    goals = torch.tensor([[0.3, 0.0]])  # reached at step 3: rewards -0.2, -0.1, -0.0
    weights = {k: v.unsqueeze(0) for k, v in algorithm.model_params(params).items()}
    x, y = sampler.budgeted(goals, weights, torch.Generator())
    _, _, masks, rewards, _, _ = sampler.objective.unpack(y)
    full, cut, unused = [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0] * 6
    assert masks[0].view(-1, 6).tolist() == [full, full, full, cut, unused, unused]  # 9 steps, then 1 of 3
    assert float(sampler.objective.mean_return(None, y[0])) == pytest.approx((3 * -0.3 - 0.2) / 4)
    x, y = sampler.collect(goals, weights, torch.Generator(), shared=False)
    assert float(sampler.objective.mean_return(None, y[0])) == pytest.approx(-0.3)


def test_a_budget_of_whole_episodes_is_the_fixed_count_batch():
    env = Navigation2D(horizon=8, tolerance=0.0)  # no episode ends early
    sampler = RolloutSampler(env, trajectories=4, budget=4 * 8)
    torch.manual_seed(0)
    algorithm = MAML(GaussianPolicy(), sampler.objective, inner_lr=0.1)
    params = algorithm.init_params()
    sampler.bind(algorithm, params, 1)
    goals = torch.tensor([[0.3, -0.1], [-0.2, 0.4]])
    weights = {k: v.expand(2, *v.shape) for k, v in algorithm.model_params(params).items()}
    budgeted = sampler.budgeted(goals, weights, torch.Generator().manual_seed(1))
    fixed = sampler.collect(goals, weights, torch.Generator().manual_seed(1), shared=False)
    assert all(torch.equal(a, b) for a, b in zip(budgeted, fixed))


def test_linear_baseline_is_the_least_squares_fit():
    g = torch.Generator().manual_seed(0)
    observations = torch.randn(3, 4, 10, 2, generator=g, dtype=torch.float64)
    masks = torch.ones(3, 4, 10, dtype=torch.float64)
    masks[1, 2, 6:] = 0
    features = baseline_features(observations, masks).flatten(1, 2)
    returns = torch.randn(3, 40, generator=g, dtype=torch.float64) * masks.flatten(1)
    weights = fit_baseline(features, returns, ridge=0.0)
    for task in range(3):
        expected = torch.linalg.lstsq(features[task], returns[task].unsqueeze(-1)).solution.squeeze(-1)
        torch.testing.assert_close(features[task] @ weights[task], features[task] @ expected, rtol=1e-8, atol=1e-8)


def sampled(seed=0, tasks=3, dtype=torch.float64, algorithm="maml", inner_loss="likelihood"):
    torch.manual_seed(seed)
    model = GaussianPolicy(hidden=(16, 16)).to(dtype)
    sampler = RolloutSampler(Navigation2D(horizon=12), trajectories=4, inner_loss=inner_loss)
    algorithm = {"maml": MAML, "metasgd": MetaSGD}[algorithm](model, sampler.objective, inner_lr=0.1)
    params = {k: v.to(dtype).requires_grad_() for k, v in algorithm.init_params().items()}
    sampler.bind(algorithm, params, 1)
    return algorithm, params, sampler.sample(tasks, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("inner_loss", ["likelihood", "ratio"])
def test_vmapped_policy_gradient_step_equals_a_per_task_loop(inner_loss):
    algorithm, params, batch = sampled(inner_loss=inner_loss)
    loss, _, _ = algorithm.meta_loss(params, batch)
    grads = torch.autograd.grad(loss, list(params.values()))
    reference = 0.0
    for task in range(len(batch)):
        actions, advantages, masks, _, mean0, log_std0 = algorithm.objective.unpack(batch.support_y[task])
        mean, log_std = predict(algorithm.model, params, batch.support_x[task]).chunk(2, -1)
        weight = log_prob(actions, mean, log_std)
        if inner_loss == "ratio":
            weight = torch.exp(weight - log_prob(actions, mean0, log_std0))
        support = (-weight * advantages * masks).sum() / masks.sum()
        inner = torch.autograd.grad(support, list(params.values()), create_graph=True)
        fast = {k: w - 0.1 * g for (k, w), g in zip(params.items(), inner)}
        actions, advantages, masks, _, mean0, log_std0 = algorithm.objective.unpack(batch.query_y[task])
        mean, log_std = predict(algorithm.model, fast, batch.query_x[task]).chunk(2, -1)
        ratio = torch.exp(log_prob(actions, mean, log_std) - log_prob(actions, mean0, log_std0))
        reference = reference + -(ratio * advantages * masks).sum() / masks.sum() / len(batch)
    expected = torch.autograd.grad(reference, list(params.values()))
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    for name, got, want in zip(params, grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10, msg=name)


def test_the_two_inner_losses_take_one_step_and_differ_in_the_meta_gradient():
    """At the sampling policy both surrogates have REINFORCE's gradient, so adaptation does not depend on the
    choice; the meta-gradient goes through their Hessians, which differ (float64)."""
    (algorithm, params, batch), (ratio, _, _) = sampled(), sampled(inner_loss="ratio")
    for task in range(len(batch)):
        for one, other in zip(
            algorithm.adapted_weights(params, batch.support_x[task], batch.support_y[task], 1).values(),
            ratio.adapted_weights(params, batch.support_x[task], batch.support_y[task], 1).values(),
        ):
            torch.testing.assert_close(one, other, rtol=1e-10, atol=1e-12)
    likelihood = torch.autograd.grad(algorithm.meta_loss(params, batch)[0], list(params.values()))
    weighted = torch.autograd.grad(ratio.meta_loss(params, batch)[0], list(params.values()))
    difference = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(likelihood, weighted))
    assert difference > 1e-3


def test_query_set_was_sampled_by_the_adapted_policy():
    algorithm, params, batch = sampled()
    for task in range(len(batch)):
        fast = algorithm.adapted_weights(params, batch.support_x[task], batch.support_y[task], 1)
        mean, log_std = predict(algorithm.model, fast, batch.query_x[task]).chunk(2, -1)
        _, _, _, _, mean0, log_std0 = algorithm.objective.unpack(batch.query_y[task])
        torch.testing.assert_close(mean, mean0)
        torch.testing.assert_close(log_std, log_std0)
    assert float(meta_divergence(algorithm, params, batch).detach()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("algorithm_name", ["maml", "metasgd"])
def test_gauss_newton_curvature_equals_the_divergence_hessian_at_the_sampling_policy(algorithm_name):
    """The product TRPO uses against a Hessian-vector product of the divergence by double backward (float64)."""
    algorithm, params, batch = sampled(tasks=3, algorithm=algorithm_name)
    gradient = torch.autograd.grad(meta_divergence(algorithm, params, batch), list(params.values()), create_graph=True)
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        tangents = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        exact = torch.autograd.grad(
            sum((d * t).sum() for d, t in zip(gradient, tangents.values())), list(params.values()), retain_graph=True
        )
        product = divergence_curvature(algorithm, params, batch)(tangents)
        assert sum(float(p.detach().abs().sum()) for p in product.values()) > 0
        for (name, got), want in zip(product.items(), exact):
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10, msg=name)


def test_conjugate_gradient_carries_the_true_residual():
    """TRPO takes x^T F x as x . (g - residual) instead of another product: the residual must be g - F x."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(30, 30, generator=g, dtype=torch.float64)
    matrix, target = (
        m @ m.T + 0.1 * torch.eye(30, dtype=torch.float64),
        torch.randn(30, generator=g, dtype=torch.float64),
    )
    x, residual = conjugate_gradient(lambda v: matrix @ v, target, 10)
    torch.testing.assert_close(residual, target - matrix @ x, rtol=1e-6, atol=1e-8)
    assert float(residual.norm()) > 1e-3  # 10 of 30 iterations: far from solved, so the check has teeth
    x, residual = conjugate_gradient(lambda v: matrix @ v, target, 200)
    # Solved to its tolerance on |residual|^2 (1e-10), whatever the threads' summation order.
    assert float((target - matrix @ x).norm()) < 1.01e-5 and float(residual @ residual) < 1e-10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trpo_step_keeps_the_kl_bound_and_improves_the_surrogate(seed):
    algorithm, params, batch = sampled(seed, tasks=4)
    optimizer = TRPO(list(params.values()), max_kl=0.01)
    before = {k: v.detach().clone() for k, v in params.items()}

    def loss():
        return algorithm.meta_loss(params, batch, 0)[0]

    def divergence():
        return meta_divergence(algorithm, params, batch)

    with torch.no_grad():
        start_loss = float(algorithm.meta_loss(params, batch, 0)[0])
    product = divergence_curvature(algorithm, params, batch)
    fraction = optimizer.step(loss, divergence, lambda tangents: list(product(dict(zip(params, tangents))).values()))
    with torch.no_grad():
        assert float(loss()) < start_loss and float(divergence()) <= 0.01
    assert fraction > 0
    assert any(not torch.equal(before[k], params[k]) for k in params)


def test_interrupted_and_resumed_run_ends_with_the_straight_runs_weights(tmp_path):
    a, b = straight_and_resumed(SMALL, tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert all(math.isfinite(r["return"]) for r in rows)
    train = [r for r in rows if r["split"] == "train"]
    assert all(r["return_before_adaptation"] < 0 and r["env_steps_per_sec"] > 0 for r in train)

    evaluate(tmp_path / "resumed", "eval.episodes=6", "eval.meta_batch=4", "sampler.trajectories=2", cwd=tmp_path)
    report = only_report(tmp_path / "resumed")
    assert report["metric"] == "return" and report["episodes"] == 6
    assert [r["steps"] for r in report["by_inner_step"]] == [0, 1, 2, 3]
    assert report["mean"] == report["by_inner_step"][1]["mean"]
    assert all(r["mean"] < 0 and r["ci95"] >= 0 for r in report["by_inner_step"])
    table = run_inline("summarize", tmp_path / "resumed", "--markdown", cwd=tmp_path)
    assert table.returncode == 0, table.stdout + table.stderr
    for point in report["by_inner_step"]:
        assert f"| return_{point['steps']}steps (2traj) | {point['mean']:.4f}" in table.stdout  # not the 40 of its test

    # A checkpoint saved before sampler.budget existed takes it at evaluation, into a report and rows of its own.
    state = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=False)
    del state["config"]["sampler"]["budget"]
    torch.save(state, tmp_path / "resumed/checkpoints/older.pt")
    evaluate(
        tmp_path / "resumed/checkpoints/older.pt",
        "eval.episodes=4",
        "sampler.budget=40",
        "sampler.later_rate=0.25",
        cwd=tmp_path,
    )
    # later_rate departs from the run's protocol: it is in the report's name and row (it changes the result).
    report = json.loads((tmp_path / "resumed/eval-test-40envsteps-later_rate0.25-1steps-4ep-older.json").read_text())
    assert report["settings"]["sampler"]["budget"] == 40 and report["settings"]["sampler"]["later_rate"] == 0.25
    assert all(r["mean"] < 0 for r in report["by_inner_step"])
    table = run_inline("summarize", tmp_path / "resumed", "--markdown", cwd=tmp_path).stdout
    assert f"| return_2steps (40envsteps-later_rate0.25) | {report['by_inner_step'][2]['mean']:.4f}" in table


def evaluate(checkpoint, *settings, cwd) -> None:
    """`metaexp eval` of `checkpoint` on the CPU, run from `cwd`; it must succeed."""
    result = run_inline("eval", f"checkpoint={checkpoint}", "trainer.device=cpu", *settings, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        ([*SMALL, "algorithm=protonet"], "cannot learn reinforcement-learning tasks"),
        ([*SMALL, "backbone=conv4"], "Use backbone=gaussian_policy"),
        ([*SMALL, "dataset.oracle=true"], "Set backbone.in_features=4"),
        ([*SMALL, "algorithm=anil"], "cannot adapt a policy"),
        ([*SMALL, "sampler.inner_loss=dice"], "sampler.inner_loss='dice' is not valid: it must be one of likelihood"),
        (["dataset=sinusoid", "backbone=gaussian_policy"], "backbone=GaussianPolicy is a policy for reinforcement"),
        (["dataset=sinusoid", "optim=trpo", "trainer.device=cpu"], "optim=trpo bounds how far a policy moves"),
    ],
)
def test_mismatched_components_are_refused_in_one_paragraph(tmp_path, args, expected):
    result = run_inline("train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in " ".join(result.stdout.split()), result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_trpo_refuses_an_algorithm_without_a_divergence():
    from metaexp.algorithms.reptile import Reptile
    from metaexp.engine import check_combination
    from metaexp.errors import MetaexpError

    sampler, cpu = RolloutSampler(Navigation2D(), trajectories=2), torch.device("cpu")
    with pytest.raises(MetaexpError, match="optim=trpo bounds the change of the adapted policy"):
        check_combination(
            Reptile(GaussianPolicy(), sampler.objective), TRPO, device=cpu, cuda_graph=False, scheduled=False
        )
    with pytest.raises(MetaexpError, match="captured CUDA graph or several processes"):
        check_combination(MAML(GaussianPolicy(), sampler.objective), TRPO, device=cpu, cuda_graph=True, scheduled=False)
    with pytest.raises(MetaexpError, match="mse regression tasks have no policy"):
        check_combination(MAML(GaussianPolicy(), REGRESSION), TRPO, device=cpu, cuda_graph=False, scheduled=False)
    check_combination(MAML(GaussianPolicy(), sampler.objective), TRPO, device=cpu, cuda_graph=False, scheduled=False)


def test_halfcheetah_steps_match_gymnasium():
    gymnasium = pytest.importorskip("gymnasium", reason="gymnasium[mujoco] is not installed (make install-dev)")
    from metaexp.datasets.halfcheetah import HalfCheetah

    env = HalfCheetah(goal="velocity")
    g = torch.Generator().manual_seed(0)
    goals = torch.tensor([0.5, 1.5], dtype=torch.float64)
    state = env.reset(goals, 3, g)
    actions = torch.randn(2, 3, 6, generator=g, dtype=torch.float64) * 0.7
    following, reward, done = env.step(state, actions, goals)
    reference = gymnasium.make("HalfCheetah-v5").unwrapped
    reference.reset(seed=0)
    for task in range(2):
        for k in range(3):
            qpos, qvel = state[task, k, 1:10].numpy(), state[task, k, 10:19].numpy()
            reference.set_state(qpos, qvel)
            observation, _, _, _, info = reference.step(actions[task, k].clamp(-1, 1).numpy())
            torch.testing.assert_close(env.observe(following, goals)[task, k], torch.from_numpy(observation))
            cost = 0.05 * float(actions[task, k].clamp(-1, 1).square().sum())
            assert float(reward[task, k]) == pytest.approx(-abs(info["x_velocity"] - float(goals[task])) - cost)
    assert not done.any()


def test_baseline_fit_survives_collinear_features():
    # A policy pinned at the clip (observations all 10) after an oversized step: the observation, its square and
    # the constant are collinear columns of size 10^4 x 2,000 rows, singular for float32 with the plain ridge.
    observations = torch.full((2, 20, 100, 4), 10.0)
    masks = torch.ones(2, 20, 100)
    features = baseline_features(observations, masks).flatten(1, 2)
    returns = -torch.arange(100.0).repeat(2, 20) / 100
    weights = fit_baseline(features, returns)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(features @ weights.unsqueeze(-1), returns.unsqueeze(-1), atol=1e-3, rtol=0)
