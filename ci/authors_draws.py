"""The authors' own random draws (Richards et al. 2021), flown and trained on by metaexp: whether a difference
between metaexp's figures and the paper's lies in the simulator, in the training, or in which references and
winds were drawn. metaexp draws its own (torch's generator); the authors' come from JAX's.

  python ci/authors_draws.py draw REPO OUT --seeds 0 1 2    (a Python with jax) their test references and winds
      for each seed (test_all.py's calls) and their 500 training references and winds (generate_data.py's)
  python ci/authors_draws.py fly REPO OUT --seeds 0 1 2     (metaexp's Python) their test references flown with
      metaexp's PID, beside the per-reference errors they committed (test_results/seed=S_M=10.pkl)
  python ci/authors_draws.py train REPO OUT RUN --seed 0 --M 50   (metaexp's Python) their training references
      flown by metaexp's PD controller in their winds, the M flights their train_lstsq.py sub-sampled at that seed
      (train_results/lstsq/seed=S_M=M.pkl), and metaexp's ACMRR preset trained on them into RUN, then tested
      on metaexp's test set as `metaexp eval` does

REPO: a checkout of StanfordASL/Adaptive-Control-Oriented-Meta-Learning; `draw` imports its utils.py for the
spline functions and calls them as their scripts do, with the random bits of the JAX of 2021."""

import argparse
import json
import subprocess
import sys
from pathlib import Path


def draw(repo: Path, out: Path, seeds: list) -> None:
    import jax

    jax.config.update("jax_threefry_partitionable", False)  # the bits JAX drew before 0.5
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(repo))
    from utils import random_ragged_spline, spline

    step = (jnp.array([-2.0, -2.0, -jnp.pi / 6]), jnp.array([2.0, 2.0, jnp.pi / 6]))
    low, high = jnp.array([-jnp.inf, -jnp.inf, -jnp.pi / 3]), jnp.array([jnp.inf, jnp.inf, jnp.pi / 3])

    def references(key, count: int, duration: float, knots_within: float):
        """(key, r, dr, ddr): their splines sampled every 0.01 s, clipped at pi/3, derivatives by jacfwd."""
        key, *subkeys = jax.random.split(key, count + 1)
        knot_times, _, coefs = jax.vmap(random_ragged_spline, (0,) + (None,) * 8)(
            jnp.vstack(subkeys), duration, 6, (9, 9, 6), (4, 4, 2), *step, knots_within * low, knots_within * high
        )
        # t = 0 nudged: today's JAX differentiates tau**0 at tau = 0 to nan (the term's derivative is zero).
        times = jnp.arange(0, duration + 1e-2, 1e-2).at[0].set(1e-12)

        def reference(t, knots, c):
            return jnp.clip(jnp.array([spline(t, knots, ci) for ci in c]), low, high)

        def derivatives(t, knots, c):
            velocity = jax.jacfwd(reference)
            return reference(t, knots, c), velocity(t, knots, c), jax.jacfwd(velocity)(t, knots, c)

        drawn = jax.lax.map(lambda a: jax.vmap(lambda t: derivatives(t, *a))(times), (knot_times, coefs))
        return key, *drawn

    def save(name: str, wind, r, dr, ddr) -> None:
        arrays = {"wind": wind, "r": r, "dr": dr, "ddr": ddr}
        np.savez(out / name, **{k: np.asarray(v) for k, v in arrays.items()})
        print(f"drew {out / name}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:  # test_all.py: key seed + 20, 200 references of 10 s, knots within 0.7 pi/3, 10 Beta(5, 7)
        key, *reference = references(jax.random.PRNGKey(seed + 20), 200, 10.0, 0.7)
        save(f"test-seed{seed}.npz", 10.0 * jax.random.beta(jax.random.split(key)[1], 5.0, 7.0, (200,)), *reference)
    # generate_data.py: key 0, 500 references of 30 s, knots within pi/3, winds 6 Beta(5, 9)
    key, *reference = references(jax.random.PRNGKey(0), 500, 30.0, 1.0)
    save("train.npz", 6.0 * jax.random.beta(jax.random.split(key)[1], 5.0, 9.0, (500,)), *reference)


def loaded(path: Path) -> tuple:
    """(r, dr, ddr, wind) of a drawn file, in float64."""
    import numpy as np
    import torch

    drawn = np.load(path)
    return tuple(torch.as_tensor(drawn[k]).double() for k in ("r", "dr", "ddr", "wind"))


def fly_them(args) -> None:
    import numpy as np
    from fly_authors_models import unpickled

    from metaexp.control import FOUR_GAINS
    from metaexp.datasets.rotorcraft import Gains, fly, integral_features, wind_drag

    print("| seed | gains (Λ/K/Γ) | metaexp on their references | their PID | largest difference on one reference |")
    print("| --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        *reference, wind = loaded(args.out / f"test-seed{seed}.npz")
        results = unpickled(args.repo / "test_results" / f"seed={seed}_M=10.pkl")
        grid = results["gains"]  # {"Λ": (1,), "K": (1, 10), "P": (1, 10)}
        for gains in FOUR_GAINS:
            flight = fly(tuple(reference), integral_features, Gains(*(x.double() for x in Gains.scaled(*gains))),
                         lambda q, dq: wind_drag(q, dq, wind), 0.01)  # fmt: skip
            ours = flight.rms_error().numpy()
            index = (grid["Λ"].index(gains[0]), grid["K"].index(gains[1]), grid["P"].index(gains[2]))
            theirs = np.asarray(results["pid"][index]["rms_error"])
            print(f"| {seed} | {'/'.join(map(str, gains))} | {ours.mean():.4f} | {theirs.mean():.4f} | "
                  f"{np.abs(ours - theirs).max():.1e} |", flush=True)  # fmt: skip


def train_on_them(args) -> None:
    import numpy as np
    from fly_authors_models import unpickled

    from metaexp import api
    from metaexp.configs import compose
    from metaexp.datasets import rotorcraft

    *reference, wind = loaded(args.out / "train.npz")
    chosen = np.asarray(unpickled(args.repo / "train_results" / "lstsq" / f"seed={args.seed}_M={args.M}.pkl")
                        ["hparams"]["subtraj_idx"])  # fmt: skip
    reference, wind = tuple(x[chosen] for x in reference), wind[chosen]
    flown = rotorcraft.track_pd(reference, lambda q, dq: rotorcraft.wind_drag(q, dq, wind), 0.01)
    flights = rotorcraft.Flights(flown.q.float(), flown.dq.float(), flown.u.float(), wind.float(), 0.01)
    rotorcraft.RotorcraftWind.flights = lambda self: flights  # the test set stays metaexp's
    overrides = [f"experiment=acmrr_rotorcraft_m{args.M}", f"seed={args.seed}", f"dataset.trajectories={args.M}"]
    api.train(compose(overrides + ["trainer.device=cpu"]), args.run)
    # The test flies metaexp's test set, which needs no training flight: the CLI's own evaluation.
    checkpoint = args.run / "checkpoints" / "best.pt"
    subprocess.run([sys.executable, "-m", "metaexp", "eval", f"checkpoint={checkpoint}", "trainer.device=cpu"],
                   check=True)  # fmt: skip
    for report in sorted(args.run.glob("eval-test-*-best.json")):
        for row in json.loads(report.read_text())["by_gains"]:
            print(f"{row['method']} {row['gains']}: {row['mean']:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["draw", "fly", "train"])
    parser.add_argument("repo", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("run", type=Path, nargs="?")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--M", type=int, default=50)
    args = parser.parse_args()
    if args.step == "draw":
        draw(args.repo, args.out, args.seeds)
    else:
        (fly_them if args.step == "fly" else train_on_them)(args)


if __name__ == "__main__":
    main()
