"""The authors' own trained regressors (Richards et al. 2021's committed `train_results/<method>/seed=S_M=M.pkl`),
flown by metaexp's controller on metaexp's test set: whether a difference from the paper's figure is in the
training or in the test. Prints, per method, M and gain setting, the mean RMS tracking error over the seeds.

Usage: python ci/fly_authors_models.py REPO [--methods lstsq ours] [--M 2 10 50] [--seeds 0 1 2]
(REPO: a checkout of StanfordASL/Adaptive-Control-Oriented-Meta-Learning; its pickles need numpy only)."""

import argparse
import pickle
import statistics
import sys
import types
from pathlib import Path

import numpy as np
import torch

from metaexp.control import FOUR_GAINS
from metaexp.datasets.rotorcraft import Gains, RotorcraftWind, fly, wind_drag


def unpickled(path: Path) -> dict:
    """The pickle's dict, with jax arrays read back as numpy (jax is not needed: its array type is stubbed)."""

    class Reader(pickle.Unpickler):
        def find_class(self, module, name):
            if module.startswith("jax"):
                return lambda *args: np.asarray(args[0]) if args else types.SimpleNamespace()
            return super().find_class(module, name)

    with path.open("rb") as file:
        return Reader(file).load()


def regressor(model: dict):
    """y(q, dq): the authors' tanh layers, in float32 as they ran."""
    layers = [(torch.as_tensor(np.asarray(w)).float(), torch.as_tensor(np.asarray(b)).float())
              for w, b in zip(model["W"], model["b"])]  # fmt: skip

    def features(q, dq):
        y = torch.cat([q, dq], -1)
        for w, b in layers:
            y = torch.tanh(y @ w.T + b)
        return y

    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", type=Path)
    parser.add_argument("--methods", nargs="*", default=["lstsq", "ours"])
    parser.add_argument("--M", type=int, nargs="*", default=[2, 10, 50])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    test = RotorcraftWind().split("test")
    wind = test.wind
    print("| method | M | gains (Λ/K/Γ) | mean RMS error over the seeds | seeds |")
    print("| --- | --- | --- | --- | --- |")
    for method in args.methods:
        for m in args.M:
            models = [unpickled(args.repo / "train_results" / method / f"seed={s}_M={m}.pkl")["model"]
                      for s in args.seeds]  # fmt: skip
            for gains in FOUR_GAINS:
                errors = []
                with torch.no_grad():
                    for model in models:
                        flight = fly(test.reference, regressor(model), Gains.scaled(*gains),
                                     lambda q, dq: wind_drag(q, dq, wind), test.dt)  # fmt: skip
                        errors.append(flight.rms_error().mean().item())
                spread = f"{statistics.fmean(errors):.3f} ± {statistics.pstdev(errors):.3f}"
                print(f"| {method} | {m} | {'/'.join(map(str, gains))} | {spread} | {len(errors)} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
