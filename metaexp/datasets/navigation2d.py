"""2D navigation (Finn et al. 2017, section 5.3, after the authors' released point-mass environment): a point
starts at (0, 0) and must reach a goal drawn uniformly from a square. Written in torch so that every task and
every trajectory of a meta-batch steps together, one tensor operation per time step, on the training device.

Reward is minus the Euclidean distance to the goal after the move, as in the released code and learn2learn's
Particles2D (the paper's text says squared distance); an episode ends once the point is within `tolerance` of
the goal (Euclidean), or after `horizon` steps.
"""

import torch

from metaexp.schema import at_least


class Navigation2D:
    """Goals U[goals]^2; actions are velocities scaled by `max_speed` and clipped to [-max_speed, max_speed];
    `oracle=true` appends the goal to the observation (the paper's oracle policy)."""

    def __init__(
        self,
        goals=(-0.5, 0.5),
        horizon: int = 100,
        max_speed: float = 0.1,
        tolerance: float = 0.01,
        oracle: bool = False,
    ):
        at_least("dataset.horizon", horizon, 1, whole=True)
        at_least("dataset.max_speed", max_speed, 0)
        self.goals, self.horizon, self.max_speed, self.tolerance = tuple(goals), horizon, max_speed, tolerance
        self.oracle = oracle
        self.observation_size, self.action_size = (4 if oracle else 2), 2

    def split(self, name: str) -> "Navigation2D":
        return self

    def sample_tasks(self, tasks: int, generator: torch.Generator, device) -> torch.Tensor:
        """Goals `[tasks, 2]`."""
        low, high = self.goals
        return torch.rand(tasks, 2, generator=generator, device=device) * (high - low) + low

    def reset(self, goals: torch.Tensor, trajectories: int, generator: torch.Generator) -> torch.Tensor:
        """Start states `[tasks, trajectories, 2]`: every point at the origin (no randomness)."""
        return goals.new_zeros(len(goals), trajectories, 2)

    def observe(self, state: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        if not self.oracle:
            return state
        return torch.cat([state, goals.unsqueeze(1).expand_as(state)], -1)

    def step(self, state: torch.Tensor, action: torch.Tensor, goals: torch.Tensor) -> tuple:
        """(next state, reward, done), each `[tasks, trajectories, ...]`."""
        velocity = (action * self.max_speed).clamp(-self.max_speed, self.max_speed)
        state = state + velocity
        distance = (state - goals.unsqueeze(1)).norm(dim=-1)
        return state, -distance, distance < self.tolerance
