"""Learning curves of run records: validation metric against meta-training step, one panel per protocol."""

import math
from pathlib import Path

from metaexp.errors import MetaexpError
from metaexp.files import replacing
from metaexp.records import BOOKKEEPING, differing


def plot(records: list, path: Path, grouped: bool) -> None:
    """Validation metric vs step: one panel per validation protocol (metric and training setting), one line with
    markers per run or config (band: min-max over seeds), each labelled by what differs within its panel."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cycler import cycler
    from matplotlib.ticker import MaxNLocator

    protocols = sorted({r.protocol for r in records if r.metric and r.val_curve})
    if not protocols:
        raise MetaexpError("None of these runs has validation metrics to plot yet.")
    columns = min(3, len(protocols))
    rows = math.ceil(len(protocols) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(7 * columns, 8 * rows), squeeze=False)
    for axis in axes.flat[len(protocols) :]:
        axis.set_visible(False)
    for axis, name in zip(axes.flat, protocols):
        panel = [r for r in records if r.protocol == name and any(r.val_curves or [r.val_curve])]
        # One line per run (per config when grouped): a run's evaluations in several settings share its curve.
        panel = list({r.label: r for r in panel}.values())
        names = [r.label for r in panel] if grouped else [" ".join(p) for p in differing(panel, BOOKKEEPING)]
        # Twenty colours, then the same with dashes: no two lines of a panel look alike.
        colours = plt.get_cmap("tab20").colors
        axis.set_prop_cycle(cycler(linestyle=["-", "--", ":"]) * cycler(color=colours))
        for r, label in zip(panel, names):
            label = f"{r.algorithm} {label}".strip()
            curves = [c for c in (r.val_curves if grouped else [r.val_curve]) if c]
            steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
            values = [[dict(c)[s] for c in curves] for s in steps]
            label = textwrap.fill(label or Path(r.run).name, 48, max_lines=3, placeholder=" ...")
            (line,) = axis.plot(steps, [sum(v) / len(v) for v in values], marker="o", markersize=4, label=label)
            if len(curves) > 1:
                axis.fill_between(
                    steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2, color=line.get_color()
                )
        every = [step for r in panel for step, _ in r.val_curve]
        if min(every) > 0 and max(every) > 100 * min(every):
            axis.set_xscale("log")  # a 2-minute run beside a full schedule: both readable
        else:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        axis.set_xlabel("meta-training step")
        axis.set_ylabel(f"validation {name.split(',')[0]}")
        axis.set_title(f"validation: {name}" + (" (mean; band: min-max over seeds)" if grouped else ""), fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)  # below
    figure.tight_layout()
    with replacing(path) as file:  # a full disk leaves the old picture, never a cut one
        figure.savefig(file, format="png", dpi=110, bbox_inches="tight")
