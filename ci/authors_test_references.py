"""The authors' own test references, flown by metaexp's simulator and controller: whether metaexp's closed loop
gives, reference by reference, the PID errors committed in Richards et al. 2021's `test_results/seed=S_M=10.pkl`.
It separates the simulator from the reference draws: metaexp draws its own references (torch's generator), so
its test figures differ from the authors' by the draws alone if this agrees.

Two steps, because the authors' references come from JAX's generator:
  python ci/authors_test_references.py draw REPO OUT --seeds 0 1 2   (a Python with jax; their test_all.py's draw)
  python ci/authors_test_references.py fly REPO OUT --seeds 0 1 2    (metaexp's Python)
REPO: a checkout of StanfordASL/Adaptive-Control-Oriented-Meta-Learning. `draw` imports its utils.py for the
spline functions and repeats test_all.py's calls (PRNG key seed + 20, 200 references of 10 s, attitude knots
within 0.7 pi/3, the reference clipped at pi/3, derivatives by jacfwd) with the PRNG of the JAX of 2021."""

import argparse
import sys
from pathlib import Path

GAINS = [(1, 10, 10), (1, 1, 1), (1, 1, 10), (1, 10, 1)]  # test_all.py's grid, in metaexp's order


def draw(repo: Path, out: Path, seeds: list) -> None:
    import jax

    jax.config.update("jax_threefry_partitionable", False)  # the bits JAX drew before 0.5
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(repo))
    from utils import random_ragged_spline, spline

    low, high = jnp.array([-jnp.inf, -jnp.inf, -jnp.pi / 3]), jnp.array([jnp.inf, jnp.inf, jnp.pi / 3])
    # t = 0 nudged: today's JAX differentiates tau**0 at tau = 0 to nan (the term's derivative is zero).
    times = jnp.arange(0, 10.0 + 1e-2, 1e-2).at[0].set(1e-12)
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        key = jax.random.PRNGKey(seed + 20)
        key, *subkeys = jax.random.split(key, 201)
        knot_times, _, coefs = jax.vmap(random_ragged_spline, (0,) + (None,) * 8)(
            jnp.vstack(subkeys), 10.0, 6, (9, 9, 6), (4, 4, 2), jnp.array([-2.0, -2.0, -jnp.pi / 6]),
            jnp.array([2.0, 2.0, jnp.pi / 6]), 0.7 * low, 0.7 * high,
        )  # fmt: skip
        key, subkey = jax.random.split(key, 2)
        wind = 10.0 * jax.random.beta(subkey, 5.0, 7.0, (200,))

        def reference(t, knots, c):
            return jnp.clip(jnp.array([spline(t, knots, ci) for ci in c]), low, high)

        def derivatives(t, knots, c):
            velocity = jax.jacfwd(reference)
            return reference(t, knots, c), velocity(t, knots, c), jax.jacfwd(velocity)(t, knots, c)

        r, dr, ddr = jax.vmap(lambda knots, c: jax.vmap(lambda t: derivatives(t, knots, c))(times))(knot_times, coefs)
        arrays = {"wind": wind, "r": r, "dr": dr, "ddr": ddr}
        np.savez(out / f"seed{seed}.npz", **{k: np.asarray(v) for k, v in arrays.items()})
        print(f"seed {seed}: 200 references drawn into {out / f'seed{seed}.npz'}", flush=True)


def fly_them(repo: Path, out: Path, seeds: list) -> None:
    import numpy as np
    import torch
    from fly_authors_models import unpickled

    from metaexp.datasets.rotorcraft import Gains, fly, integral_features, wind_drag

    print("| seed | gains (Λ/K/Γ) | metaexp on their references | their PID | largest difference on one reference |")
    print("| --- | --- | --- | --- | --- |")
    for seed in seeds:
        drawn = np.load(out / f"seed{seed}.npz")
        reference = tuple(torch.as_tensor(drawn[k]).double() for k in ("r", "dr", "ddr"))
        wind = torch.as_tensor(drawn["wind"]).double()
        results = unpickled(repo / "test_results" / f"seed={seed}_M=10.pkl")
        grid = results["gains"]  # {"Λ": (1,), "K": (1, 10), "P": (1, 10)}
        for gains in GAINS:
            flight = fly(reference, integral_features, Gains(*(x.double() for x in Gains.scaled(*gains))),
                         lambda q, dq: wind_drag(q, dq, wind), 0.01)  # fmt: skip
            ours = flight.rms_error().numpy()
            index = (grid["Λ"].index(gains[0]), grid["K"].index(gains[1]), grid["P"].index(gains[2]))
            theirs = np.asarray(results["pid"][index]["rms_error"])
            print(f"| {seed} | {'/'.join(map(str, gains))} | {ours.mean():.4f} | {theirs.mean():.4f} | "
                  f"{np.abs(ours - theirs).max():.1e} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["draw", "fly"])
    parser.add_argument("repo", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    (draw if args.step == "draw" else fly_them)(args.repo, args.out, args.seeds)


if __name__ == "__main__":
    main()
