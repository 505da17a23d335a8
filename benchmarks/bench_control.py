"""Adaptive control's costs on this machine: closed-loop simulation steps per second of the test protocol
(200 references x 1,001 control steps, the adaptive controller with a 6-32-32 regressor in the true wind,
every reference stepping together), and seconds per meta-training step of the control-oriented method
(M = 10: 7 wind models x 7 references of 5 s, forward and backward through the flights), eager and with the
control step compiled (its compile time printed apart). One thread, as the presets run."""

import argparse
import time

import torch

from metaexp import loop
from metaexp.api import compose
from metaexp.datasets.rotorcraft import Gains, RotorcraftWind, fly, wind_drag
from metaexp.engine import MetaStep

PRESET = "control_oriented_rotorcraft_m10"


def test_flights_per_second(references: int) -> float:
    """(references x control steps) per second of one test flight under gains (I, 10 I, 10 I)."""
    data = RotorcraftWind(test_references=references).split("test")
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh())
    with torch.no_grad():
        start = time.perf_counter()
        fly(data.reference, lambda q, dq: model(torch.cat([q, dq], -1)), Gains.scaled(),
            lambda q, dq: wind_drag(q, dq, data.wind), data.dt)  # fmt: skip
        seconds = time.perf_counter() - start
    return references * data.reference[0].shape[1] / seconds


def meta_step_seconds(compiled: bool, steps: int, epochs: int) -> tuple:
    """(seconds per meta-step, seconds of the first step, which compiles) of the M = 10 preset."""
    overrides = [f"experiment={PRESET}", "trainer.device=cpu", f"algorithm.compile={str(compiled).lower()}"]
    cfg = compose([*overrides, f"sampler.ensemble_epochs={epochs}"])
    run = loop.build_run(cfg, torch.device("cpu"))
    step = MetaStep(run.algorithm, run.params, run.optimizer, device=torch.device("cpu"))
    batch = run.train_sampler.sample(cfg.trainer.meta_batch, run.generator)
    start = time.perf_counter()
    step(batch, 0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(steps):
        step(batch, i + 1)
    return (time.perf_counter() - start) / steps, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--references", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5, help="timed meta-steps after the first")
    parser.add_argument("--epochs", type=int, default=2, help="ensemble epochs (its fit is not timed here)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rate = test_flights_per_second(args.references)
    print(f"test protocol: {args.references} references x 1001 steps, {rate:,.0f} closed-loop steps/s")
    for compiled in (False, True):
        seconds, first = meta_step_seconds(compiled, args.steps, args.epochs)
        kind = "compiled control step" if compiled else "eager"
        print(f"meta-training step, M = 10 (49 flights of 5 s), {kind}: {seconds:.2f} s (first step {first:.1f} s)")


if __name__ == "__main__":
    main()
