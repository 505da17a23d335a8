"""HalfCheetah task families of MAML (Finn et al. 2017, section 5.3): run at a goal velocity drawn from
U[0, 2] (reward minus the absolute velocity error), or forward or backward (+1/-1, reward the direction times
the forward velocity); both minus a control cost of 0.05 * |a|^2 (rllab's 0.5 * 1e-1, on the clipped action)
and 200 steps per episode, no early end.

The model is gymnasium's HalfCheetah (`half_cheetah.xml`, 5 MuJoCo steps of 0.01 s per action, observation
qpos[1:] and qvel: 17 numbers) on MuJoCo itself: every trajectory of every task steps together through
`mujoco.rollout` (C, `threads` worker threads) on full physics states kept as one array, so a rollout is one
call per time step, not a Python loop over environments. Needs `pip install "gymnasium[mujoco]"`.
"""

from pathlib import Path

import torch

from metaexp.errors import MetaexpError
from metaexp.schema import at_least

FRAME_SKIP = 5


class HalfCheetah:
    def __init__(
        self,
        goal: str = "velocity",
        velocities=(0.0, 2.0),
        horizon: int = 200,
        control_cost: float = 0.05,
        reset_noise: float = 0.1,
        threads: int = 1,
    ):
        at_least("dataset.horizon", horizon, 1, whole=True)
        at_least("dataset.threads", threads, 1, whole=True)
        try:
            import gymnasium.envs.mujoco
            import mujoco
            from mujoco import rollout
        except ImportError as error:
            raise MetaexpError(
                f"dataset=halfcheetah needs MuJoCo through gymnasium, which is not installed ({error}). Install it "
                f'with pip install "gymnasium[mujoco]" (or pip install "metaexp[rl]").'
            ) from error
        if goal not in ("velocity", "direction"):
            raise MetaexpError(f"dataset.goal={goal!r} is not valid: use velocity or direction.")
        self.mujoco, self.rollout = mujoco, rollout
        self.model = mujoco.MjModel.from_xml_path(
            str(Path(gymnasium.envs.mujoco.__file__).parent / "assets" / "half_cheetah.xml")
        )
        self.datas = [mujoco.MjData(self.model) for _ in range(threads)]
        self.goal, self.velocities, self.horizon = goal, tuple(velocities), horizon
        self.control_cost, self.reset_noise = control_cost, reset_noise
        self.nq, self.nv = self.model.nq, self.model.nv
        self.observation_size, self.action_size = self.nq - 1 + self.nv, self.model.nu
        self.dt = self.model.opt.timestep * FRAME_SKIP
        initial = self.datas[0]
        mujoco.mj_resetData(self.model, initial)
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self.state0 = torch.zeros(mujoco.mj_stateSize(self.model, spec), dtype=torch.float64)
        mujoco.mj_getState(self.model, initial, self.state0.numpy(), spec)

    def split(self, name: str) -> "HalfCheetah":
        return self

    def sample_tasks(self, tasks: int, generator: torch.Generator, device) -> torch.Tensor:
        """Goals `[tasks]`: velocities, or directions +1/-1."""
        u = torch.rand(tasks, generator=generator, device=device)
        if self.goal == "direction":
            return torch.where(u < 0.5, -1.0, 1.0)
        low, high = self.velocities
        return u * (high - low) + low

    def reset(self, goals: torch.Tensor, trajectories: int, generator: torch.Generator) -> torch.Tensor:
        """Full physics states `[tasks, trajectories, n]` (float64, CPU): gymnasium's reset noise, uniform
        +-reset_noise on the positions and reset_noise * N(0, 1) on the velocities."""
        shape = (len(goals), trajectories)
        state = self.state0.expand(*shape, -1).clone()
        qpos, qvel = slice(1, 1 + self.nq), slice(1 + self.nq, 1 + self.nq + self.nv)
        noise = torch.rand(*shape, self.nq, generator=generator, device=goals.device).double().cpu()
        state[..., qpos] += (noise * 2 - 1) * self.reset_noise
        noise = torch.randn(*shape, self.nv, generator=generator, device=goals.device).double().cpu()
        state[..., qvel] += noise * self.reset_noise
        return state

    def observe(self, state: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        """qpos[1:] and qvel, in the goals' precision and device."""
        return state[..., 2 : 1 + self.nq + self.nv].to(goals.device, goals.dtype)

    def step(self, state: torch.Tensor, action: torch.Tensor, goals: torch.Tensor) -> tuple:
        control = action.clamp(-1.0, 1.0)
        flat = state.reshape(-1, state.shape[-1]).numpy()
        controls = control.detach().reshape(-1, 1, self.action_size).double().cpu().numpy()
        states, _ = self.rollout.rollout(self.model, self.datas, flat, controls, nstep=FRAME_SKIP)
        following = torch.from_numpy(states[:, -1]).view_as(state)
        velocity = ((following[..., 1] - state[..., 1]) / self.dt).to(goals.device, goals.dtype)
        if self.goal == "direction":
            progress = goals.unsqueeze(1) * velocity
        else:
            progress = -(velocity - goals.unsqueeze(1)).abs()
        reward = progress - self.control_cost * control.square().sum(-1)
        return following, reward, torch.zeros_like(reward, dtype=torch.bool)
