"""`metaexp summarize DIR...`: one row per run (or per config, averaged over seeds) with validation and test
metrics, published figures, steps, wall time, throughput and machine; a rich table, CSV or Markdown, and
learning curves with `--plot`."""

import argparse
import csv
import io
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metaexp.errors import MetaexpError
from metaexp.logs import console
from metaexp.plots import plot
from metaexp.presets import attach_published, preset_records, preset_tables, runs_preset
from metaexp.records import label_runs, read_records

# (display heading, record field) of the table; CSV and JSON use the field names and plain numbers.
COLUMNS = [
    ("run", "label"),
    ("test", "test"),
    ("test metric", "test_mean"),
    ("published", "published"),
    ("best val", "best_val"),
    ("final val", "final_val"),
    ("steps", "steps"),
    ("wall time (s)", "wall_time_s"),
    ("tasks/s", "tasks_per_sec"),
    ("machine", "machine"),
    ("status", "status"),
]
FIELDS = [
    "label", "test", "metric", "higher_is_better", "test_mean", "test_ci95", "ci", "episodes", "n_seeds",
    "published", "best_val", "final_val", "steps", "wall_time_s", "tasks_per_sec", "machine", "status", "run",
]  # fmt: skip
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (any statistics table).
T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t_interval(values: list) -> float:
    """Half-width of the 95% t-interval of the mean of a few values (seeds): t(0.975, n-1) * s / sqrt(n)."""
    n = len(values)
    if n < 2:
        return 0.0
    t = T95[n - 2] if n - 1 <= len(T95) else 1.96
    return t * statistics.stdev(values) / math.sqrt(n)


def by_config(records: list) -> list:
    """Records averaged over seeds: one per (config, test setting); the CI is a t-interval over the seeds."""
    groups = {}
    for r in records:
        groups.setdefault((r.config, r.test), []).append(r)
    merged = []
    for (config, test), group in groups.items():

        def mean(key):
            values = [getattr(g, key) for g in group if getattr(g, key) is not None]
            return sum(values) / len(values) if values else None

        tests = [g.test_mean for g in group if g.test_mean is not None]
        single = len(tests) == 1
        merged.append(
            replace(
                group[0],
                label=f"{config or 'all'} (n={len(group)})",
                test_mean=mean("test_mean"),
                test_ci95=group[0].test_ci95 if single else t_interval(tests) if tests else None,
                ci=group[0].ci if single else f"95% t interval over {len(tests)} seeds" if tests else None,
                n_seeds=len(group),
                best_val=mean("best_val"),
                final_val=mean("final_val"),
                wall_time_s=mean("wall_time_s"),
                tasks_per_sec=mean("tasks_per_sec"),
                status=", ".join(sorted({g.status for g in group})),
                val_curves=[g.val_curve for g in group],
            )
        )
    return merged


def cells(r) -> list:
    """The display strings of a Record's table row."""

    def number(v, digits=4):
        return "" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)

    shown = {field: number(getattr(r, field)) for _, field in COLUMNS}
    shown["label"], shown["test"], shown["machine"], shown["status"] = r.label, r.test or "", r.machine or "", r.status
    shown["wall_time_s"] = number(r.wall_time_s, 5)
    if r.test_mean is not None:
        shown["test_mean"] = f"{r.test_mean:.4f} ± {r.test_ci95:.4f}"
    return [shown[field] for _, field in COLUMNS]


def preset_markdown(records: list) -> str:
    """The table a reviewer reads first: one row per preset and test setting, from its longest recorded run as
    published (or `not yet run`): measured mean and 95% interval, the paper's figure, the steps run of the
    preset's schedule, the machine and the status."""
    tables, tasks = preset_tables()
    chosen = {}
    for r in records:
        if r.preset in tasks and r.test and (r.n_seeds == 0 or (r.test_mean is not None and runs_preset(r, tables))):
            key = (r.preset, r.test)
            if key not in chosen or (r.steps, r.test_mean is not None) > (chosen[key].steps, True):
                chosen[key] = r
    lines = [
        "| preset | setting | measured | published | steps run | machine | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for (preset, test), r in sorted(chosen.items()):
        measured = f"{r.test_mean:.4f} ± {r.test_ci95:.4f}" if r.test_mean is not None else ""
        published = "" if r.published is None else f"{r.published:.4g}"
        steps = f"{r.steps:,} of {tasks[preset][2]:,}"  # a not-yet-run row has run 0
        status = r.status.split(";")[0]
        lines.append(f"| {preset} | {test} | {measured} | {published} | {steps} | {r.machine or ''} | {status} |")
    return "\n".join(lines) + "\n"


def table_records(paths: list, grouped: bool, presets: bool) -> list:
    """The table's rows over the runs at or under `paths` (per config when `grouped`), with their papers'
    figures, and (with `presets`) a 'not yet run' row per preset setting no run evaluated. A run that cannot
    be read is named on standard error and left out."""
    records, bad = read_records(paths)
    warnings = Console(stderr=True)  # standard output may be the CSV or Markdown table
    for run, error in bad:
        warnings.print(f"[yellow]skipped {run}:[/yellow] {escape(str(error))}", highlight=False, soft_wrap=True)
    if not records:
        raise MetaexpError(f"None of the {len(bad)} runs found could be read (each is listed above).")
    label_runs(records)
    if grouped:
        records = by_config(records)
    if presets or any(r.preset for r in records):
        tables, tasks = preset_tables()
        attach_published(records, tables)
        if presets:
            records += preset_records(records, tables, tasks)
    return records


def plain(r) -> dict:
    """A Record's fields for CSV and JSON."""
    return {field: getattr(r, field) for field in FIELDS}


def markdown(records: list) -> str:
    headings = [heading for heading, _ in COLUMNS]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    return "\n".join([*lines, *("| " + " | ".join(cells(r)) + " |" for r in records)]) + "\n"


def main(argv: list) -> None:
    parser = argparse.ArgumentParser(prog="metaexp summarize", description=__doc__)
    parser.add_argument("dirs", nargs="+", help="run directories or multirun directories")
    parser.add_argument(
        "--by",
        choices=["run", "config"],
        default="run",
        help="one row per run, or per config averaged over seeds (95%% t-interval over the seeds)",
    )
    parser.add_argument("--csv", action="store_true", help="write CSV (numeric columns) to standard output")
    parser.add_argument("--json", action="store_true", help="write the records as JSON to standard output")
    parser.add_argument("--markdown", action="store_true", help="write a Markdown table to standard output")
    parser.add_argument("--plot", type=Path, help="write learning curves (validation metric vs step) to this PNG")
    parser.add_argument(
        "--presets",
        action="store_true",
        help="add a 'not yet run' row for each preset test setting that no run evaluated",
    )
    args = parser.parse_args(argv)
    grouped = args.by == "config"
    records = table_records(args.dirs, grouped=grouped, presets=args.presets)
    if args.csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, FIELDS)
        writer.writeheader()
        writer.writerows(plain(r) for r in records)
        sys.stdout.write(out.getvalue())
    elif args.json:
        sys.stdout.write(json.dumps([plain(r) for r in records], indent=2) + "\n")
    elif args.markdown:
        sys.stdout.write(markdown(records))
    else:
        table = Table(title=f"metaexp summarize ({len(records)} rows; test metric: mean ± 95% CI)")
        for heading, _ in COLUMNS:
            table.add_column(heading, no_wrap=heading != "status")
        for r in records:
            table.add_row(*cells(r))
        # A pipe or a file has no width: print the table whole instead of folding it at 80 columns.
        (console if console.is_terminal else Console(width=10_000)).print(table)
    if args.plot:
        plot(records, args.plot, grouped)
        console.print(f"learning curves written to {args.plot}")
