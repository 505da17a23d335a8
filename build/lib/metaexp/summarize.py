"""`metaexp summarize DIR...`: one row per run (or per config, averaged over seeds) with validation and test
metrics, published figures, steps, wall time, throughput and machine; a rich table, CSV or Markdown, and
learning curves with `--plot`."""
import argparse
import csv
import io
import json
import sys
from pathlib import Path

import yaml

from metaexp.errors import MetaexpError
from rich.console import Console
from rich.markup import escape

from metaexp.logs import console, read_metrics

COLUMNS = ["run", "test", "test metric", "published", "best val", "final val", "steps", "wall time (s)",
           "tasks/s", "machine", "status"]


def find_runs(paths: list) -> list:
    """Run directories (holding .hydra/config.yaml) at or under the given paths, sorted."""
    runs = set()
    for path in map(Path, paths):
        if not path.exists():
            raise MetaexpError(f"{path} does not exist. Pass run directories or a multirun directory.")
        for config in [path / ".hydra" / "config.yaml", *path.glob("**/.hydra/config.yaml")]:
            if config.is_file():
                runs.add(config.parent.parent)
    if not runs:
        raise MetaexpError(f"No runs under {', '.join(map(str, paths))}: a run directory holds .hydra/config.yaml "
                           f"and metrics.jsonl, as `metaexp train` writes them (outputs/<date>/<time>/ or "
                           f"outputs/multirun/<date>/<time>/<job>/).")
    return sorted(runs)


class BadRun(Exception):
    """A run directory whose records cannot be read; summarize lists it and goes on with the others."""


def load_run(run: Path) -> tuple:
    """(config, overrides, metrics rows) of a run directory, each checked for the fields summarize reads."""
    def yaml_file(path, kind, default):
        if not path.is_file():
            return default
        try:
            value = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise BadRun(f"{path.relative_to(run)} is not readable YAML ({type(error).__name__})") from error
        if not isinstance(value, kind):
            raise BadRun(f"{path.relative_to(run)} does not hold a {kind.__name__}")
        return value
    config = yaml_file(run / ".hydra" / "config.yaml", dict, None)
    if config is None:
        raise BadRun(".hydra/config.yaml is empty")
    overrides = yaml_file(run / ".hydra" / "overrides.yaml", list, [])
    rows = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    for number, row in enumerate(rows, 1):
        if not (isinstance(row, dict) and isinstance(row.get("step"), int) and row.get("split") in ("train", "val")):
            raise BadRun(f"metrics.jsonl row {number} is not an object with a step and a split: {str(row)[:60]}")
    return config, overrides, rows


def read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
        float(report["mean"]), float(report["ci95"]), report["settings"]["sampler"].items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise BadRun(f"{path.name} is not a metaexp eval report ({type(error).__name__}: {error})") from error
    return report


def describe(run: Path) -> list:
    """One record per evaluation of a run (at least one, with the test fields empty)."""
    config, overrides, rows = load_run(run)
    metric = next((k for r in rows for k in ("accuracy", "mse") if k in r), None)
    higher = metric == "accuracy"
    val = [r for r in rows if r["split"] == "val"]
    train = [r for r in rows if r["split"] == "train" and r.get("tasks_per_sec")]
    steps = max((r["step"] for r in rows), default=0)
    planned = config.get("trainer", {}).get("steps")
    status = "done" if steps and steps == planned else (f"stopped at step {steps}" if steps else
                                                        f"failed: {last_error(run)}")
    machine_file = run / "machine.json"
    base = {
        "run": str(run), "overrides": [o for o in overrides if not o.startswith("hydra.")],
        "preset": next((o.partition("=")[2] for o in overrides if o.startswith("experiment=")), None),
        "metric": metric, "val_curve": [(r["step"], r[metric]) for r in val] if metric else [],
        "best val": (max if higher else min)(r[metric] for r in val) if val else None,
        "final val": val[-1][metric] if val else None, "steps": steps,
        "wall time (s)": max((r["elapsed_s"] for r in rows), default=None),
        "tasks/s": sum(r["tasks_per_sec"] for r in train) / len(train) if train else None,
        "machine": json.loads(machine_file.read_text())["device"] if machine_file.is_file() else None,
        "status": status, "published": None}
    evals = sorted(run.glob("eval*.json"))
    if not evals:
        return [{**base, "test": None, "test metric": None, "test ci95": None}]
    records = []
    for path in evals:
        report = read_report(path)
        sampler = report["settings"]["sampler"]
        setting = f"{sampler['ways']}w{sampler['shots']}s" if "ways" in sampler else f"{sampler['shots']}shot"
        records.append({**base, "test": setting, "test metric": report["mean"], "test ci95": report["ci95"],
                        "episodes": report["episodes"]})
    return records


def published_tables() -> dict:
    """Each conf/experiment preset's published figures, keyed by test setting (e.g. {"5w1s": 0.988})."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from metaexp.api import config_dir
    conf = Path(config_dir())
    tables = {}
    with initialize_config_dir(str(conf), version_base="1.3"):
        for path in sorted((conf / "experiment").glob("*.yaml")):
            published = compose("train", overrides=[f"experiment={path.stem}"]).test.get("published")
            table = OmegaConf.to_container(published) if published else {}
            tables[path.stem] = {k: v for k, v in table.items() if v is not None}
    return tables


def attach_published(records: list, tables: dict) -> None:
    for r in records:
        if r["test"] is not None and r["preset"] in tables:
            r["published"] = tables[r["preset"]].get(r["test"])


def preset_records(records: list, tables: dict) -> list:
    """A 'not yet run' record for each published setting of each preset that no run evaluated."""
    done = {(r["preset"], r["test"]) for r in records if r["test metric"] is not None}
    return [{"run": preset, "label": preset, "config": preset, "preset": preset, "overrides": [], "metric": None,
             "val_curve": [], "test": setting, "test metric": None, "test ci95": None, "published": value,
             "best val": None, "final val": None, "steps": 0, "wall time (s)": None, "tasks/s": None,
             "machine": None, "status": "not yet run"}
            for preset, table in tables.items() for setting, value in table.items() if (preset, setting) not in done]


def last_error(run: Path) -> str:
    if (run / "error.txt").is_file():
        return (run / "error.txt").read_text().strip()[:160]
    for log in sorted(run.glob("*.log")):
        lines = [l for l in log.read_text(errors="replace").splitlines() if "error" in l.lower()]
        if lines:
            return lines[-1].strip()[:160]
    return "no metrics written"


def label_runs(records: list) -> None:
    """Name each record by the overrides that differ between runs (or its directory when none differ)."""
    keys = {}
    for r in records:
        for o in r["overrides"]:
            key, _, value = o.partition("=")
            keys.setdefault(key, set()).add(value)
    differing = {k for k, values in keys.items() if len(values) > 1 or any(
        k not in {o.partition("=")[0] for o in r["overrides"]} for r in records)}
    for r in records:
        parts = [o for o in r["overrides"] if o.partition("=")[0] in differing]
        r["label"] = " ".join(parts) or Path(r["run"]).name
        r["config"] = " ".join(p for p in parts if not p.startswith("seed="))


def by_config(records: list) -> list:
    """Records averaged over seeds: one per (config, test setting)."""
    groups = {}
    for r in records:
        groups.setdefault((r["config"], r["test"]), []).append(r)
    from metaexp.evaluate import mean_ci95
    merged = []
    for (config, test), group in groups.items():
        def mean(key):
            values = [g[key] for g in group if g[key] is not None]
            return sum(values) / len(values) if values else None
        tests = [g["test metric"] for g in group if g["test metric"] is not None]
        ci = group[0]["test ci95"] if len(tests) == 1 else mean_ci95(tests)[1] if tests else None
        merged.append({**group[0], "label": f"{config or 'all'} (n={len(group)})", "test metric": mean("test metric"),
                       "test ci95": ci, "best val": mean("best val"), "final val": mean("final val"),
                       "wall time (s)": mean("wall time (s)"), "tasks/s": mean("tasks/s"),
                       "status": ", ".join(sorted({g["status"] for g in group})),
                       "val_curves": [g["val_curve"] for g in group]})
    return merged


def cells(r: dict) -> list:
    def number(v, digits=4):
        return "" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)
    test = "" if r["test metric"] is None else f"{r['test metric']:.4f} ± {r['test ci95']:.4f}"
    return [r["label"], r["test"] or "", test, number(r["published"]), number(r["best val"]),
            number(r["final val"]), str(r["steps"]), number(r["wall time (s)"], 5), number(r["tasks/s"]),
            r["machine"] or "", r["status"]]


def plot(records: list, path: Path, grouped: bool) -> None:
    """Validation metric vs step, one panel per metric, one line per run or config (band: min-max over seeds)."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = sorted({r["metric"] for r in records if r["metric"]})
    if not metrics:
        raise MetaexpError("None of these runs has validation metrics to plot yet.")
    figure, axes = plt.subplots(1, len(metrics), figsize=(7 * len(metrics), 5.5), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        seen = set()
        for r in records:
            curves = [c for c in (r.get("val_curves") if grouped else [r["val_curve"]]) if c]
            if r["metric"] != metric or r["label"] in seen or not curves:
                continue
            seen.add(r["label"])
            steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
            values = [[dict(c)[s] for c in curves] for s in steps]
            line, = axis.plot(steps, [sum(v) / len(v) for v in values], label=textwrap.fill(r["label"], 70))
            if len(curves) > 1:
                axis.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2,
                                  color=line.get_color())
        axis.set_xlabel("step")
        axis.set_ylabel(f"validation {metric}")
        axis.set_title(f"validation {metric}" + (" (mean; band: min-max over seeds)" if grouped else ""))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def main(argv: list) -> None:
    parser = argparse.ArgumentParser(prog="metaexp summarize", description=__doc__)
    parser.add_argument("dirs", nargs="+", help="run directories or multirun directories")
    parser.add_argument("--by", choices=["run", "config"], default="run",
                        help="one row per run, or per config averaged over seeds")
    parser.add_argument("--csv", action="store_true", help="write CSV to standard output")
    parser.add_argument("--markdown", action="store_true", help="write a Markdown table to standard output")
    parser.add_argument("--plot", type=Path, help="write learning curves (validation metric vs step) to this PNG")
    parser.add_argument("--presets", action="store_true",
                        help="add a 'not yet run' row for each published preset setting that no run evaluated")
    args = parser.parse_args(argv)
    records, bad = [], []
    for run in find_runs(args.dirs):
        try:
            records += describe(run)
        except BadRun as error:
            bad.append((run, error))
    warnings = Console(stderr=True)  # standard output may be the CSV or Markdown table
    for run, error in bad:
        warnings.print(f"[yellow]skipped {run}:[/yellow] {escape(str(error))}", highlight=False, soft_wrap=True)
    if not records:
        raise MetaexpError(f"None of the {len(bad)} runs found could be read (each is listed above).")
    label_runs(records)
    grouped = args.by == "config"
    if grouped:
        records = by_config(records)
    if args.presets or any(r["preset"] for r in records):
        tables = published_tables()
        attach_published(records, tables)
        if args.presets:
            records += preset_records(records, tables)
    table = [cells(r) for r in records]
    if args.csv:
        out = io.StringIO()
        csv.writer(out).writerows([COLUMNS, *table])
        sys.stdout.write(out.getvalue())
    elif args.markdown:
        sys.stdout.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
        sys.stdout.writelines("| " + " | ".join(row) + " |\n" for row in table)
    else:
        from rich.table import Table
        rich_table = Table(title=f"metaexp summarize ({len(records)} rows)")
        for column in COLUMNS:
            rich_table.add_column(column, overflow="fold")
        for row in table:
            rich_table.add_row(*row)
        console.print(rich_table)
    if args.plot:
        plot(records, args.plot, grouped)
        console.print(f"learning curves written to {args.plot}")
