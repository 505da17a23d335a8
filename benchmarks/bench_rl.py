"""HalfCheetah stepping rate (metaexp's all-trajectories-at-once `mujoco.rollout` against gymnasium's
HalfCheetah-v5, one environment in one process) and MAML-TRPO meta-iteration time on 2D navigation (20 goals x
20 trajectories x 100 steps before and after adaptation, then the TRPO step), metaexp against learn2learn's
examples/rl/maml_trpo.py loop (Particles2D-v1, cherry-rl 0.2.0, gym 0.23.1, one environment worker), seconds
per meta-iteration and the ratio.

The peer runs from `--l2l-examples DIR` (learn2learn's examples/rl/maml_trpo.py at commit 6d113f8 and
policies.py, whose DiagNormalPolicy needs a `device=` keyword that example passes) with `--peer-path DIR` (gym
0.23.1, cherry-rl 0.2.0, dotmap: `make peer-rl` installs them there), in a subprocess so that its gym never
meets metaexp's environment. Without `--l2l-examples`, only metaexp's time is printed."""

import argparse
import os
import subprocess
import sys
import time

import torch

from metaexp import loop
from metaexp.api import compose
from metaexp.engine import MetaStep

PEER = """
import sys, time
import maml_trpo
start = time.perf_counter()
maml_trpo.main(num_iterations={iterations}, num_workers=1)
print("PEER_SECONDS", (time.perf_counter() - start) / {iterations})
"""


def metaexp_seconds(device: str, iterations: int) -> tuple:
    """(seconds per meta-iteration, of which sampling) after one warm-up iteration."""
    cfg = compose(["experiment=maml_navigation2d", f"trainer.device={device}"])
    device = torch.device(device)
    run = loop.build_run(cfg, device)
    step = MetaStep(run.algorithm, run.params, run.optimizer, device=device)
    step(run.train_sampler.sample(cfg.trainer.meta_batch, run.generator), 0)  # warm-up
    sampling = total = 0.0
    for i in range(iterations):
        start = time.perf_counter()
        batch = run.train_sampler.sample(cfg.trainer.meta_batch, run.generator)
        sampled = time.perf_counter()
        step(batch, i + 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sampling += sampled - start
        total += time.perf_counter() - start
    return total / iterations, sampling / iterations


def halfcheetah_rates(environments: int = 800, steps: int = 20) -> tuple:
    """(metaexp steps/s over `environments` trajectories at once, gymnasium's HalfCheetah-v5 steps/s)."""
    import gymnasium

    from metaexp.datasets.halfcheetah import HalfCheetah

    env, g = HalfCheetah(), torch.Generator().manual_seed(0)
    goals = env.sample_tasks(environments // 20, g, "cpu")
    state = env.reset(goals, 20, g)
    start = time.perf_counter()
    for _ in range(steps):
        state, _, _ = env.step(state, torch.rand(*state.shape[:2], 6, generator=g) * 2 - 1, goals)
    ours = environments * steps / (time.perf_counter() - start)
    single = gymnasium.make("HalfCheetah-v5")
    single.reset(seed=0)
    start = time.perf_counter()
    for _ in range(2000):
        single.step(single.action_space.sample())
    return ours, 2000 / (time.perf_counter() - start)


def peer_seconds(examples: str, peer_path: str, iterations: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([peer_path, examples]), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", PEER.format(iterations=iterations)], env=env, capture_output=True, text=True
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PEER_SECONDS")]
    if result.returncode or not lines:
        sys.exit(f"learn2learn's maml_trpo.py failed:\n{result.stderr[-2000:]}")
    return float(lines[-1].split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--l2l-examples", help="folder with learn2learn's examples/rl maml_trpo.py and policies.py")
    parser.add_argument("--peer-path", default="build/peer-rl", help="folder with gym 0.23.1, cherry-rl, dotmap")
    parser.add_argument("--peer-iterations", type=int, default=1)
    args = parser.parse_args()
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    print(f"device: {card}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    batched, single = halfcheetah_rates()
    print(f"HalfCheetah: {batched:,.0f} steps/s, 800 trajectories at once (gymnasium's HalfCheetah-v5: {single:,.0f})")
    ours, sampling = metaexp_seconds(args.device, args.iterations)
    print(f"metaexp: {ours:.2f} s per meta-iteration ({sampling:.2f} s of it sampling), mean of {args.iterations}")
    if args.l2l_examples:
        peer = peer_seconds(args.l2l_examples, args.peer_path, args.peer_iterations)
        print(f"learn2learn maml_trpo.py: {peer:.2f} s per meta-iteration (1 worker, mean of {args.peer_iterations})")
        print(f"ratio: {peer / ours:.1f}x")


if __name__ == "__main__":
    main()
