"""The adaptive-control figures of docs/adaptive_control.md, from the run records of the study
(ci/rotorcraft_study.sh; committed under results/records/ for seed 0 and results/control/records/seed<S>/ for
the others) and, for the flights, one seed's checkpoints (RUNS/seed<S>/<preset>/, --flight-seed, 0 unless said):

- control_figure4.png: mean RMS tracking error against M under each gain setting (Lambda/K/Gamma), metaexp's
  points (mean and std over the seeds run, from each run's best.pt report) beside the paper's (Richards et al.
  2021, Figure 4, computed from the authors' committed test results: results/control/richards2021_figure4.json).
- control_figure3.png: one test reference flown by PID, ACMRR and the control-oriented method (M = 10, that seed,
  gains I, 10 I, 10 I): the path in the plane and the tracking error over time, as the paper's Figure 3.

Usage: python ci/control_figures.py RUNS [--records results/records results/control/records] [--out docs]
       [--flight-seed S]"""

import argparse
import json
import statistics
from pathlib import Path

import torch

from metaexp.api import load_run
from metaexp.configs import compose
from metaexp.components import build
from metaexp.datasets.rotorcraft import Gains, fly, integral_features, wind_drag

COLOURS = {"pid": "tab:gray", "acmrr": "tab:blue", "controloriented": "tab:red", "maml": "tab:green",
           "anil": "tab:olive", "metasgd": "tab:purple"}  # fmt: skip
NAMES = {"pid": "PID", "acmrr": "ACMRR", "controloriented": "control-oriented", "maml": "MAML", "anil": "ANIL",
         "metasgd": "Meta-SGD"}  # fmt: skip


def measured(folders: list) -> dict:
    """{(method, gains, M): [mean RMS error of each seed]} from the records' best.pt reports."""
    found = {}
    for report in sorted(r for folder in folders for r in folder.glob("**/*_rotorcraft_m*/eval-test-M*-best.json")):
        data = json.loads(report.read_text())
        m = int(data["settings"]["label"].removeprefix("M"))
        for row in data["by_gains"]:
            found.setdefault((row["method"], row["gains"], m), []).append(row["mean"])
    # PID learns nothing: every report flies it on the same test set, so it is one measurement.
    return {key: sorted(set(v)) if key[0] == "pid" else v for key, v in found.items()}


def seeds(method: str, points: list) -> str:
    """`, 1-2 seeds` for a legend: how many seeds each point averages (PID: one flight of the test set)."""
    if method == "pid":
        return ""
    counts = sorted({len(v) for _, v in points})
    return f", {counts[0]}{f'-{counts[-1]}' if len(counts) > 1 else ''} seed{'s' if counts[-1] > 1 else ''}"


def figure4(folders: list, paper: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    ours = measured(folders)
    panels = ["1/10/10", "1/1/1", "1/1/10", "1/10/1", "learned"]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8), sharey=False)
    for axis, gains in zip(axes, panels):
        for method, colour in COLOURS.items():
            rows = [r for r in paper["rows"] if r["method"] == method and r["gains"] == gains]
            if rows:
                axis.errorbar([r["M"] for r in rows], [r["mean"] for r in rows], [r["std"] for r in rows],
                              color=colour, alpha=0.45, capsize=2, label=f"{NAMES[method]} (paper)")  # fmt: skip
            points = sorted((m, v) for (meth, g, m), v in ours.items() if meth == method and g == gains)
            if points:
                axis.errorbar([m for m, _ in points], [statistics.fmean(v) for _, v in points],
                              [statistics.pstdev(v) for _, v in points], color=colour, fmt="o", capsize=3,
                              label=f"{NAMES[method]} (metaexp{seeds(method, points)})")  # fmt: skip
        axis.set_title("learned gains" if gains == "learned" else f"Λ, K, Γ = {gains.replace('/', ', ')} × I")
        axis.set_xlabel("M (training flights)")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean RMS tracking error")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    figure.tight_layout(rect=(0, 0.14, 1, 1))
    figure.savefig(out, dpi=110)


FLOWN = {"acmrr": "acmrr_rotorcraft_m10", "controloriented": "control_oriented_rotorcraft_m10"}  # Figure 3's runs


def figure3(flown: dict, seed: int, out: Path) -> None:
    """`flown`: {method: its run directory of seed `seed`}, each flown from its best.pt."""
    import matplotlib.pyplot as plt

    cfg = compose(["experiment=acmrr_rotorcraft_m10"])
    test = build(cfg.dataset, "dataset").split("test")
    reference = tuple(x[:1] for x in test.reference)
    wind = test.wind[:1]
    regressors = {"pid": integral_features}
    for method, run in flown.items():
        loaded = load_run(run, checkpoint="best")
        regressors[method] = loaded.algorithm.regressor(loaded.params)
    figure, (plane, error) = plt.subplots(1, 2, figsize=(11, 4))
    plane.plot(reference[0][0, :, 0], reference[0][0, :, 1], "k--", label="reference")
    times = torch.arange(reference[0].shape[1]) * test.dt
    with torch.no_grad():
        for method, regressor in regressors.items():
            flight = fly(reference, regressor, Gains.scaled(), lambda q, dq: wind_drag(q, dq, wind), test.dt)
            plane.plot(flight.q[0, :, 0], flight.q[0, :, 1], color=COLOURS[method], label=NAMES[method])
            gap = flight.error()[0].norm(dim=-1)
            error.plot(
                times, gap, color=COLOURS[method], label=f"{NAMES[method]} (RMS {gap.square().mean().sqrt():.3f})"
            )
    plane.set_xlabel("x (m)")
    plane.set_ylabel("y (m)")
    plane.set_title(f"a test reference, wind {float(wind[0]):.1f} m/s (M = 10, seed {seed})")
    plane.legend()
    error.set_xlabel("t (s)")
    error.set_ylabel("|(e, de)|")
    error.set_yscale("log")
    error.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def table(folders: list, paper: dict) -> str:
    """Markdown: per gain setting, method and M, metaexp's mean +- std over seeds (n) beside the paper's."""
    ours = measured(folders)
    theirs = {(r["method"], r["gains"], r["M"]): r for r in paper["rows"]}
    lines = ["| gains (Λ/K/Γ) | method | M | metaexp: mean ± std (seeds) | paper: mean ± std (10 seeds) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for (method, gains, m), values in sorted(
        ours.items(), key=lambda kv: (kv[0][1] != "1/10/10", kv[0][1], kv[0][0], kv[0][2])
    ):
        spread = f" ± {statistics.pstdev(values):.3f} ({len(values)} seeds)" if len(values) > 1 else " (1 seed)"
        mine = f"{statistics.fmean(values):.3f}{spread}" if method != "pid" else f"{values[0]:.3f} (no training)"
        paper_row = theirs.get((method, gains, m))
        published = f"{paper_row['mean']:.3f} ± {paper_row['std']:.3f}" if paper_row else "none published"
        lines.append(f"| {gains} | {NAMES[method]} | {m} | {mine} | {published} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", type=Path)
    parser.add_argument(
        "--records", type=Path, nargs="*", default=[Path("results/records"), Path("results/control/records")]
    )
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--flight-seed", type=int, default=0, help="whose checkpoints fly Figure 3")
    args = parser.parse_args()
    paper = json.loads(Path("results/control/richards2021_figure4.json").read_text())
    print(table(args.records, paper))
    figure4(args.records, paper, args.out / "control_figure4.png")
    flown = {method: args.runs / f"seed{args.flight_seed}" / preset for method, preset in FLOWN.items()}
    missing = [str(path) for run in flown.values() if not (path := run / "checkpoints" / "best.pt").exists()]
    if missing:  # Figure 4 and the table come from records alone; the flights need checkpoints
        verb = "is" if len(missing) == 1 else "are"
        print(
            f"Figure 3 left as it was: it flies the M = 10 checkpoints of seed {args.flight_seed}, and "
            f"{' and '.join(missing)} {verb} not here. Train them (or pass --flight-seed of a seed whose runs "
            f"are in {args.runs}) to redraw it."
        )
        return
    figure3(flown, args.flight_seed, args.out / "control_figure3.png")


if __name__ == "__main__":
    main()
