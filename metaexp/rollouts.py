"""Meta-reinforcement learning on the classifiers' data path: a task is a goal, its support set the trajectories
of the policy before adaptation, its query set those of the adapted policy. Both are handed to the algorithm
as a TaskBatch of observations `[B, K*T, obs]` and packed targets `[B, K*T, F]` (action, advantage, mask,
reward, the sampling policy's mean and log-std), so MAML's vmapped inner loop runs unchanged on a
policy-gradient objective.

Loss normalisation (it sets what the inner step size means): log-probabilities summed over action dimensions,
the importance-weighted advantage averaged over the valid time steps of all K trajectories of the task.
Advantages: GAE(gamma, lambda) on a linear baseline fitted per task (Duan et al. 2016), normalised per task.

The inner step's surrogate (`inner_loss`): `likelihood`, -mean(log pi(a|s) x A) as MAML's released code, or
`ratio`, -mean(pi(a|s) / pi_old(a|s) x A), ProMP's low-variance-curvature estimator (Rothfuss et al. 2019).
Both have the same gradient at the sampling policy, so adaptation is the same; they differ in the Hessian
that the meta-gradient and TRPO's curvature differentiate through: `ratio` adds E[grad log pi grad log pi^T A].
"""

import math
import re
import time
from typing import Callable, Mapping, Protocol

import torch
from torch.func import vmap

from metaexp.backbones import predict
from metaexp.errors import MetaexpError
from metaexp.objectives import Objective, mean_ci95
from metaexp.samplers import TaskBatch, TaskSampler, TestResult, refuse_episode_files
from metaexp.schema import at_least, one_of, within


class Environment(Protocol):
    """The contract of a reinforcement-learning task family (the data set of `sampler=rollouts`), written for
    batches: every method takes and returns tensors for all tasks and trajectories of a meta-batch at once, on
    the training device, so one call steps them all. `Navigation2D` is the smallest example."""

    horizon: int  # time steps per episode
    observation_size: int  # numbers per observation (the policy's `in_features`)
    action_size: int  # numbers per action (half the policy's outputs: mean and log-std)

    def split(self, name: str) -> "Environment":
        """The environment of one split (the same family for all, where tasks are drawn afresh)."""

    def sample_tasks(self, tasks: int, generator: torch.Generator, device) -> torch.Tensor:
        """`tasks` task descriptions `[tasks, ...]` (a goal, a velocity), drawn with `generator`."""

    def reset(self, goals: torch.Tensor, trajectories: int, generator: torch.Generator) -> torch.Tensor:
        """Start states `[tasks, trajectories, state]`."""

    def observe(self, state: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        """Observations `[tasks, trajectories, observation_size]` of the states."""

    def step(self, state: torch.Tensor, action: torch.Tensor, goals: torch.Tensor) -> tuple:
        """(next states, rewards `[tasks, trajectories]`, done flags `[tasks, trajectories]`)."""


class PolicyGradient(Objective):
    """The objective of a Gaussian policy's task: `loss` the surrogate -mean(ratio * advantage) (its gradient at
    the sampling policy is REINFORCE's), `score` the mean return per trajectory, `divergence` the mean
    KL(sampling policy || policy) that TRPO bounds."""

    def __init__(self, horizon: int, action_size: int, inner_loss: str = "likelihood"):
        inner = {"likelihood": self.likelihood, "ratio": self.surrogate}[inner_loss]
        super().__init__("return", True, self.surrogate, self.mean_return, "reinforcement-learning", inner)
        self.horizon, self.action_size = horizon, action_size

    def unpack(self, y: torch.Tensor) -> tuple:
        """(actions, advantages, masks, rewards, sampling mean, sampling log-std) of packed targets `[..., F]`."""
        a = self.action_size
        return y[..., :a], y[..., a], y[..., a + 1], y[..., a + 2], y[..., a + 3 : 2 * a + 3], y[..., 2 * a + 3 :]

    def pack(self, actions, advantages, masks, rewards, mean, log_std) -> torch.Tensor:
        return torch.cat([actions, advantages[..., None], masks[..., None], rewards[..., None], mean, log_std], -1)

    def surrogate(self, prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        actions, advantages, masks, _, old_mean, old_log_std = self.unpack(y)
        mean, log_std = prediction.chunk(2, -1)
        ratio = torch.exp(log_prob(actions, mean, log_std) - log_prob(actions, old_mean, old_log_std))
        return -(ratio * advantages * masks).sum() / masks.sum().clamp_min(1.0)

    def likelihood(self, prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-mean(log-likelihood x advantage): the surrogate's gradient without its importance weight."""
        actions, advantages, masks, _, _, _ = self.unpack(y)
        mean, log_std = prediction.chunk(2, -1)
        return -(log_prob(actions, mean, log_std) * advantages * masks).sum() / masks.sum().clamp_min(1.0)

    def mean_return(self, prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean over the task's episodes, counting those whose first step is unmasked (a budgeted batch leaves
        the slots past its budget empty)."""
        _, _, masks, rewards, _, _ = self.unpack(y)
        return (rewards * masks).sum() / masks.reshape(-1, self.horizon)[:, 0].sum().clamp_min(1.0)

    def divergence(self, prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, _, masks, _, old_mean, old_log_std = self.unpack(y)
        mean, log_std = prediction.chunk(2, -1)
        kl = (
            log_std
            - old_log_std
            + (torch.exp(2 * old_log_std) + (old_mean - mean) ** 2) / (2 * torch.exp(2 * log_std))
            - 0.5
        ).sum(-1)
        return (kl * masks).sum() / masks.sum().clamp_min(1.0)


def log_prob(actions, mean, log_std) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the action dimensions."""
    return (-((actions - mean) ** 2) / (2 * torch.exp(2 * log_std)) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def baseline_features(observations: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Duan et al. (2016)'s linear-baseline features of `[..., T, obs]` observations: the observation, its
    square, time t/100 and its square and cube, and a constant; zero on the steps after an episode ended."""
    time = torch.arange(observations.shape[-2], device=observations.device, dtype=observations.dtype) / 100.0
    time = time.view(-1, 1).expand(*observations.shape[:-1], 1)
    clipped = observations.clamp(-10, 10)
    features = torch.cat([clipped, clipped**2, time, time**2, time**3, torch.ones_like(time)], -1)
    return features * masks.unsqueeze(-1)


def fit_baseline(features: torch.Tensor, returns: torch.Tensor, ridge: float = 1e-5) -> torch.Tensor:
    """Per-task least squares: `features` `[B, n, f]`, `returns` `[B, n]` -> weights `[B, f]`, in float64. The
    ridge term starts small and grows tenfold while a system stays singular, as rllab's LinearFeatureBaseline
    does: a task whose episodes all end within a few steps leaves the time features nearly collinear."""
    x, y = features.double(), returns.double()
    gram, target = x.transpose(-1, -2) @ x, x.transpose(-1, -2) @ y.unsqueeze(-1)
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(6):
        weights, info = torch.linalg.solve_ex(gram + ridge * eye, target)
        if not info.any() and torch.isfinite(weights).all():
            break
        ridge *= 10
    return weights.squeeze(-1).to(features.dtype)


def discounted(values: torch.Tensor, masks: torch.Tensor, factor: float) -> torch.Tensor:
    """sum_k factor^k values[t+k] over the time axis (the last), stopping where `masks` is 0."""
    out, running = torch.zeros_like(values), torch.zeros_like(values[..., 0])
    for t in reversed(range(values.shape[-1])):
        running = values[..., t] + factor * running * masks[..., t]
        out[..., t] = running
    return out


def advantages(observations, rewards, masks, gamma: float, gae_lambda: float) -> torch.Tensor:
    """GAE(gamma, lambda) of `[B, K, T]` rewards on a linear baseline fitted to each task's discounted returns,
    then normalised per task over its valid steps."""
    b, k, t = rewards.shape
    returns = discounted(rewards, masks, gamma)
    features = baseline_features(observations, masks)
    weights = fit_baseline(features.flatten(1, 2), (returns * masks).flatten(1, 2))
    values = (features @ weights.view(b, 1, -1, 1)).squeeze(-1) * masks
    following = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], -1)
    next_masks = torch.cat([masks[..., 1:], torch.zeros_like(masks[..., :1])], -1)
    deltas = (rewards + gamma * following * next_masks - values) * masks
    gae = discounted(deltas, masks, gamma * gae_lambda)
    count = masks.sum((1, 2), keepdim=True).clamp_min(1.0)
    mean = (gae * masks).sum((1, 2), keepdim=True) / count
    std = (((gae - mean) ** 2 * masks).sum((1, 2), keepdim=True) / count).sqrt()
    return (gae - mean) / (std + 1e-8) * masks


class RolloutSampler(TaskSampler):
    """Tasks of an RL task family (an `Environment`) with `trajectories` (K) episodes each: the support set
    sampled with the current policy, the query set with the policy the algorithm adapted to the support set
    (`bind` gives the sampler the algorithm and its live parameters). `curve_steps`, `later_rate` and `budget`
    set the test protocol of `adaptation_curve`."""

    acts = True
    label_format = "{trajectories}traj"

    def __init__(
        self,
        data,
        trajectories: int = 20,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        inner_loss: str = "likelihood",
        curve_steps: int = 3,
        later_rate: float = 0.5,
        budget: int | None = None,
        device="cpu",
    ):
        at_least("sampler.trajectories", trajectories, 1, whole=True)
        at_least("sampler.curve_steps", curve_steps, 1, whole=True)
        within("sampler.gamma", gamma, 0, 1)
        within("sampler.gae_lambda", gae_lambda, 0, 1)
        at_least("sampler.later_rate", later_rate, 0)
        if budget is not None:
            at_least("sampler.budget", budget, 1, whole=True)
        self.env, self.trajectories, self.gamma, self.gae_lambda = data, trajectories, gamma, gae_lambda
        self.curve_steps, self.later_rate, self.budget = curve_steps, later_rate, budget
        self.device = torch.device(device)
        one_of("sampler.inner_loss", inner_loss, ("likelihood", "ratio"))
        self.objective = PolicyGradient(data.horizon, data.action_size, inner_loss)
        self.outputs = data.action_size
        self.algorithm = self.params = None
        self.reset_tally()

    @classmethod
    def label(cls, settings: Mapping) -> str:
        """`40traj`, or `4000envsteps` for a test on a budget of environment steps."""
        return f"{settings['budget']}envsteps" if settings.get("budget") else super().label(settings)

    @classmethod
    def spelled(cls) -> set:
        return {"trajectories", "budget"}

    @classmethod
    def test_overrides(cls, name: str) -> list | None:
        return [] if re.fullmatch(r"return_\d+steps", name) else None  # one eval reports every step

    @classmethod
    def objective_from(cls, dataset: Callable, settings: Mapping) -> "PolicyGradient":
        """A policy's objective is shaped by its environment (horizon, action size): built from it."""
        env = dataset()
        return PolicyGradient(env.horizon, env.action_size, settings.get("inner_loss", "likelihood"))

    def describe(self) -> str:
        return f"{self.trajectories} trajectories per task before and after adaptation"

    def reset_tally(self) -> None:
        self.returns_before, self.tasks_sampled, self.env_steps, self.seconds = 0.0, 0, 0, 0.0

    def drain(self) -> dict:
        """The train row's own fields since the last call: mean return before adaptation and environment steps
        (policy and simulator, support and query trajectories) per second of sampling."""
        row = {
            "return_before_adaptation": float(self.returns_before) / max(self.tasks_sampled, 1),
            "env_steps_per_sec": self.env_steps / max(self.seconds, 1e-9),
        }
        self.reset_tally()
        return row

    def bind(self, algorithm, params: dict, inner_steps: int) -> None:
        if algorithm.model.in_features != self.env.observation_size:
            raise MetaexpError(
                f"The policy reads {algorithm.model.in_features} inputs but {type(self.env).__name__} observes "
                f"{self.env.observation_size} numbers per step. Set backbone.in_features={self.env.observation_size}."
            )
        if not algorithm.adapts_policies:
            raise MetaexpError(
                f"{type(algorithm).__name__} cannot adapt a policy from trajectories. Use algorithm=maml, "
                f"fomaml or metasgd for reinforcement-learning task families."
            )
        self.algorithm, self.params, self.inner_steps = algorithm, params, inner_steps

    def test(self, score: Callable, options, dataset, generator: torch.Generator) -> TestResult:
        """Returns after the algorithm's test inner steps on `options.episodes` held-out tasks, and the curve of
        returns after 0..curve_steps policy-gradient steps (`by_inner_step`)."""
        refuse_episode_files(options)
        if self.inner_steps > self.curve_steps:
            raise MetaexpError(
                f"test.inner_steps={self.inner_steps} is past the curve this test measures "
                f"(sampler.curve_steps={self.curve_steps} policy-gradient steps). Set "
                f"sampler.curve_steps={self.inner_steps} as well, or fewer inner steps."
            )
        curve = self.adaptation_curve(options.episodes, options.meta_batch, generator).float().cpu()
        by_step = [dict(zip(("steps", "mean", "ci95"), (k, *mean_ci95(row.tolist())))) for k, row in enumerate(curve)]
        return TestResult(curve[self.inner_steps], None, {"by_inner_step": by_step})

    def training_images(self, count: int, generator: torch.Generator) -> torch.Tensor:
        raise MetaexpError(
            "test.norm=training sets batch-norm statistics of images, and a policy has no batch norm; leave "
            "test.norm unset for reinforcement-learning checkpoints."
        )

    def tasks(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` tasks of the family, in the policy's precision."""
        dtype = next(iter(self.params.values())).dtype
        return self.env.sample_tasks(count, generator, self.device).to(dtype)

    def sample(self, meta_batch: int, generator: torch.Generator) -> TaskBatch:
        start = time.perf_counter()
        goals = self.tasks(meta_batch, generator)
        with torch.no_grad():
            weights = self.algorithm.model_params(self.params)
            support = self.collect(goals, weights, generator, shared=True)
            fast = vmap(self.algorithm.adapted_weights, in_dims=(None, 0, 0, None))(
                self.params, *support, self.inner_steps
            )
            query = self.collect(goals, fast, generator, shared=False)
            self.returns_before += vmap(self.objective.mean_return)(*support).sum()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.tasks_sampled += meta_batch
        self.env_steps += 2 * meta_batch * self.trajectories * self.env.horizon
        self.seconds += time.perf_counter() - start
        return TaskBatch(*support, *query)

    def collect(self, goals, weights: dict, generator, shared: bool, trajectories: int | None = None) -> tuple:
        """Observations `[B, K*T, obs]` and packed targets `[B, K*T, F]` of K episodes per task; `weights` are
        one policy for all tasks (`shared`) or one per task."""
        return self.packed(*self.rollout(goals, weights, generator, shared, trajectories or self.trajectories))

    def budgeted(self, goals, weights: dict, generator) -> tuple:
        """As `collect`, batched as the released MAML code's test loop (rllab's `batch_size`): whole episodes in
        the order sampled until each task has `budget` environment steps, the last one cut at the budget, so a
        policy whose episodes end early gets more of them. Drawn `trajectories` episodes at a time."""
        rounds = [self.rollout(goals, weights, generator, False, self.trajectories)]
        while (sum(r[3].sum((1, 2)) for r in rounds) < self.budget).any():
            rounds.append(self.rollout(goals, weights, generator, False, self.trajectories))
        observations, actions, rewards, masks, means, log_stds = (torch.cat(parts, 1) for parts in zip(*rounds))
        lengths = masks.sum(-1)
        before = (lengths.cumsum(1) - lengths).unsqueeze(-1)  # the task's steps collected before each episode
        time = torch.arange(masks.shape[-1], device=masks.device, dtype=masks.dtype)
        masks = masks * (before + time < self.budget).to(masks.dtype)
        return self.packed(observations, actions, rewards, masks, means, log_stds)

    def rollout(self, goals, weights: dict, generator, shared: bool, k: int) -> tuple:
        """(observations, actions, rewards, masks, means, log-stds), each `[B, K, T, ...]`, of K episodes per
        task; after an episode ends its steps are masked and its state stays put."""
        policy = vmap(lambda w, o: predict(self.algorithm.model, w, o), in_dims=(None if shared else 0, 0))
        state = self.env.reset(goals, k, generator)
        alive = torch.ones(state.shape[:2], dtype=torch.bool, device=self.device)
        steps = []
        for _ in range(self.env.horizon):
            observation = self.env.observe(state, goals)
            mean, log_std = policy(weights, observation).chunk(2, -1)
            noise = torch.randn(mean.shape, generator=generator, device=self.device, dtype=mean.dtype)
            action = mean + log_std.exp() * noise
            following, reward, done = self.env.step(state, action, goals)
            steps.append((observation, action, reward, alive.to(reward.dtype), mean, log_std))
            state = torch.where(alive.unsqueeze(-1).to(state.device), following, state)
            alive = alive & ~done
        return tuple(torch.stack(s, 2) for s in zip(*steps))

    def packed(self, observations, actions, rewards, masks, means, log_stds) -> tuple:
        """The algorithm's view of `rollout`'s episodes: observations `[B, K*T, obs]` and packed targets
        `[B, K*T, F]`, advantages taken over each task's unmasked steps."""
        advantage = advantages(observations, rewards * masks, masks, self.gamma, self.gae_lambda)
        y = self.objective.pack(actions, advantage, masks, rewards, means, log_stds)
        return observations.flatten(1, 2), y.flatten(1, 2)

    def adaptation_curve(self, tasks: int, meta_batch: int, generator) -> torch.Tensor:
        """Mean return per task `[curve_steps + 1, tasks]` after 0..`curve_steps` policy-gradient steps, each on
        fresh trajectories of the policy so far (Finn et al. 2017, figure 4); the steps after the first take
        `later_rate` times the algorithm's inner rate (the paper: 0.1, then 0.05). Each step's batch is
        `trajectories` episodes, or `budget` environment steps where that is set."""
        steps = self.curve_steps
        curves = []
        for start in range(0, tasks, meta_batch):
            goals = self.tasks(min(meta_batch, tasks - start), generator)
            params = {k: v.expand(len(goals), *v.shape) for k, v in self.params.items()}
            returns = []
            for step in range(steps + 1):
                with torch.no_grad():
                    weights = self.algorithm.model_params(params)
                    if self.budget:
                        x, y = self.budgeted(goals, weights, generator)
                    else:
                        x, y = self.collect(goals, weights, generator, shared=False)
                    returns.append(vmap(self.objective.mean_return)(x, y))
                if step < steps:
                    scale = 1.0 if step == 0 else self.later_rate
                    fast = vmap(self.algorithm.adapted_weights, in_dims=(0, 0, 0, None, None))(params, x, y, 1, scale)
                    params = {**params, **{k: v.detach() for k, v in fast.items()}}
            curves.append(torch.stack(returns))
        return torch.cat(curves, 1)
