"""`metaexp summarize DIR...`: one row per run (or per config, averaged over seeds) with validation and test
metrics, published figures, steps, wall time, throughput and machine; a rich table, CSV or Markdown, and
learning curves with `--plot`."""

import argparse
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import statistics
import sys
from pathlib import Path

import yaml

from metaexp.version import __version__
from metaexp.errors import MetaexpError
from metaexp.files import replacing
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metaexp.logs import console, read_metrics

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
    "label",
    "test",
    "metric",
    "higher_is_better",
    "test_mean",
    "test_ci95",
    "ci",
    "episodes",
    "n_seeds",
    "published",
    "best_val",
    "final_val",
    "steps",
    "wall_time_s",
    "tasks_per_sec",
    "machine",
    "status",
    "run",
]
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
        raise MetaexpError(
            f"No runs under {', '.join(map(str, paths))}: a run directory holds .hydra/config.yaml "
            f"and metrics.jsonl, as `metaexp train` writes them (outputs/<date>/<time>/ or "
            f"outputs/multirun/<date>/<time>/<job>/)."
        )
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
    if not all(isinstance(o, str) for o in overrides):
        raise BadRun(".hydra/overrides.yaml holds entries that are not override strings")
    rows = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    for number, row in enumerate(rows, 1):
        if not (isinstance(row, dict) and isinstance(row.get("step"), int) and row.get("split") in ("train", "val")):
            raise BadRun(f"metrics.jsonl row {number} is not an object with a step and a split: {str(row)[:60]}")
    return config, overrides, rows


def read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
        float(report["mean"]), float(report["ci95"]), report["settings"]["sampler"].items()
        str(report["settings"]["label"]), str(report["settings"]["standard_label"])
        for point in report.get("by_inner_step") or []:
            int(point["steps"]), float(point["mean"]), float(point["ci95"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise BadRun(f"{path.name} is not a metaexp eval report ({type(error).__name__}: {error})") from error
    return report


def machine(run: Path) -> str | None:
    """The device a run trained on, from its machine.json (None for a run without one)."""
    path = run / "machine.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["device"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BadRun(f"machine.json is not a metaexp machine description ({type(error).__name__})") from error


def task(run: Path) -> dict:
    """What the run's task family said of itself when training started (task.json): its setting's name, the
    metric and its direction."""
    path = run / "task.json"
    if not path.is_file():
        raise BadRun("task.json is missing (a run started by a metaexp before 0.2, or one that never started)")
    try:
        described = json.loads(path.read_text())
        str(described["setting"]), str(described["metric"]), bool(described["higher_is_better"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BadRun(f"task.json is not a metaexp task description ({type(error).__name__})") from error
    return described


def describe(run: Path) -> list:
    """One record per evaluation of a run (at least one, with the test fields empty)."""
    config, overrides, rows = load_run(run)
    family = task(run)
    metric, higher = family["metric"], family["higher_is_better"]
    val = [r for r in rows if r["split"] == "val" and r.get(metric) is not None]
    laps = [r["tasks_per_sec"] for r in rows if r["split"] == "train" and r.get("tasks_per_sec")]
    steps = max((r["step"] for r in rows), default=0)
    planned = config.get("trainer", {}).get("steps")
    status = (
        "done"
        if steps and steps == planned
        else (f"stopped at step {steps}" if steps else f"failed: {last_error(run)}")
    )
    base = {
        "run": str(run),
        "overrides": [o for o in overrides if not o.startswith("hydra.")],
        "preset": next((o.partition("=")[2] for o in overrides if o.startswith("experiment=")), None),
        "metric": metric,
        "higher_is_better": higher,
        "protocol": f"{metric}, {family['setting']}",
        "val_curve": [(r["step"], r[metric]) for r in val],
        "best_val": (max if higher else min)(r[metric] for r in val) if val else None,
        "final_val": val[-1][metric] if val else None,
        "steps": steps,
        "wall_time_s": max((r["elapsed_s"] for r in rows if r.get("elapsed_s") is not None), default=None),
        # The median lap, as `metaexp train` prints it: laps leave validation time out (metaexp.logs.Stopwatch).
        "tasks_per_sec": statistics.median(laps) if laps else None,
        "machine": machine(run),
        "status": status,
        "published": None,
        "n_seeds": 1,
    }
    evals = sorted(run.glob("eval*.json"))
    if not evals:
        return [{**base, "test": None, "test_mean": None, "test_ci95": None, "episodes": None, "ci": None}]
    own_norm = (config.get("test") or {}).get("norm", "episode")
    return [{**base, **tested} for path in evals for tested in test_fields(read_report(path), metric, own_norm)]


def test_fields(report: dict, metric: str, own_norm: str) -> list:
    """The test fields of a record, one set per number of adaptation steps for a report that holds a curve
    (`return_1steps`). An evaluation with other batch-norm statistics than the run's own test says so in its
    name, and a policy's curve in other batches than its protocol's (`return_2steps (4000envsteps)`)."""
    points = report.get("by_inner_step") or [{"steps": None, "mean": report["mean"], "ci95": report["ci95"]}]
    norm = report["settings"].get("norm", "episode")
    # The task family named the setting when it tested: `label`, and `standard_label` for the run's own test.
    name = report["settings"]["label"]
    batches = "" if name == report["settings"]["standard_label"] else f" ({name})"
    return [
        {
            "test": (
                name + (f" ({norm} norm)" if norm != own_norm else "")
                if point["steps"] is None
                else f"{metric}_{point['steps']}steps{batches}"
            ),
            "test_mean": point["mean"],
            "test_ci95": point["ci95"],
            "episodes": report["episodes"],
            "ci": f"95% normal interval over {report['episodes']} episodes",
        }
        for point in points
    ]


def read_records(paths: list) -> tuple:
    """(records of every readable run at or under the paths, [(run, BadRun) of the others])."""
    records, bad = [], []
    for run in find_runs(paths):
        try:
            records += describe(run)
        except BadRun as error:
            bad.append((run, error))
    return records, bad


def preset_tables() -> tuple:
    """Each conf/experiment preset's published figures, keyed by test setting (e.g. {"5w1s": 0.988}; None where
    the paper gives no figure for a setting the preset is tested in), and its full schedule: (tasks, work per
    task), the work being examples per task times passes over them (inner steps plus the query pass).

    Composing every preset takes seconds, so the answer is kept in the user's cache under a hash of every
    config file: a changed config composes afresh."""
    from metaexp.configs import config_dir

    conf = Path(config_dir())
    digest = hashlib.sha256(f"{__version__} tables/2".encode())  # tables/2: named by the task families
    for path in sorted(conf.rglob("*.yaml")):
        digest.update(f"{path.relative_to(conf)}\0".encode() + path.read_bytes() + b"\0")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metaexp"
    cached = cache / f"presets-{digest.hexdigest()[:20]}.json"
    try:
        kept = json.loads(cached.read_text())
        return kept["tables"], {preset: tuple(schedule) for preset, schedule in kept["tasks"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        tables, tasks = composed_preset_tables(conf)
    with contextlib.suppress(MetaexpError):  # no writable cache: compose again next time
        with replacing(cached, "w") as file:
            file.write(json.dumps({"tables": tables, "tasks": tasks}))
    return tables, tasks


def composed_preset_tables(conf: Path) -> tuple:
    """preset_tables, composed from the config tree `conf`."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    tables, tasks = {}, {}
    with initialize_config_dir(str(conf), version_base="1.3"):
        for path in sorted((conf / "experiment").glob("*.yaml")):
            cfg = compose("train", overrides=[f"experiment={path.stem}"])
            s = cfg.sampler
            examples = s.get("trajectories") or s.get("ways", 1) * (s.get("shots", 0) + s.get("queries", 0))
            passes = 1 + (cfg.algorithm.get("inner_steps") or 0)
            tasks[path.stem] = (cfg.trainer.steps * cfg.trainer.meta_batch, examples * passes)
            published = cfg.test.get("published")
            table = OmegaConf.to_container(published) if published else {}
            # The preset's own test setting, as its task family names it: the figures it inherits for other
            # settings are set to null, and its own is listed even where the paper gives none.
            family = get_class(cfg.sampler._target_)
            own = family.label(OmegaConf.merge(cfg.sampler, cfg.test.get("sampler") or {}))
            tables[path.stem] = {k: v for k, v in table.items() if v is not None or k == own}
            if family.test_overrides(own) is not None:
                tables[path.stem].setdefault(own, None)
    return tables, tasks


# Overrides that leave a preset as its paper ran it: schedule and device (a shortened run says so in its
# status), seed, where the data lives, loggers. Any other override makes a variant, which has no published figure.
AS_PUBLISHED = ("experiment=", "trainer.", "seed=", "dataset.root=", "logger", "paths.", "hydra.")


def runs_preset(record: dict, tables: dict) -> bool:
    return record["preset"] in tables and all(o.startswith(AS_PUBLISHED) for o in record["overrides"])


def attach_published(records: list, tables: dict) -> None:
    for r in records:
        if r["test"] is not None and runs_preset(r, tables):
            r["published"] = tables[r["preset"]].get(r["test"])


def expected_time(preset: str, tasks: dict, records: list) -> str:
    """The preset's full schedule on each machine with a record to time it: at the throughput a recorded run of
    the preset measured (a shortened one, say), or else a run of the same algorithm on the same data set scaled
    by the work per task (examples times passes: on one H200, MAML's 20-way 5-step tasks cost 13x its 5-way
    1-step ones in `bench_engine.py`, and this scale says 12x)."""
    family = preset.rsplit("_", 1)[0]
    timed = [r for r in records if r["tasks_per_sec"] and r["preset"] in tasks]
    same = [r for r in timed if r["preset"] == preset] or [r for r in timed if r["preset"].startswith(family + "_")]
    if not same:
        return "no run of its algorithm and data set recorded to time it"
    by_machine = {}
    for r in same:
        by_machine.setdefault(r["machine"] or "the machine of its record", []).append(r)
    estimates = []
    for machine, mine in sorted(by_machine.items()):
        run = min(mine, key=lambda r: r["tasks_per_sec"])  # the slowest record: an estimate that errs long
        rate = run["tasks_per_sec"] * tasks[run["preset"]][1] / tasks[preset][1]
        basis = "" if run["preset"] == preset else f", scaled from {run['preset']}"
        hours = tasks[preset][0] / rate / 3600
        span = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
        estimates.append(f"about {span} on {machine}{basis}")
    return "; ".join(estimates)


def preset_records(records: list, tables: dict, tasks: dict) -> list:
    """A 'not yet run' record for each test setting of each preset that no run evaluated, with its expected time."""
    done = {(r["preset"], r["test"]) for r in records if r["test_mean"] is not None and runs_preset(r, tables)}
    return [
        {
            "run": preset,
            "label": preset,
            "config": preset,
            "preset": preset,
            "overrides": [],
            "metric": None,
            "higher_is_better": None,
            "protocol": None,
            "val_curve": [],
            "test": setting_name,
            "test_mean": None,
            "test_ci95": None,
            "ci": None,
            "episodes": None,
            "n_seeds": 0,
            "published": value,
            "best_val": None,
            "final_val": None,
            "steps": 0,
            "wall_time_s": None,
            "tasks_per_sec": None,
            "machine": None,
            "status": "; ".join(
                ["not yet run", expected_time(preset, tasks, records)]
                + ([] if value is not None else ["the paper gives no figure"])
            ),
        }
        for preset, table in tables.items()
        for setting_name, value in table.items()
        if (preset, setting_name) not in done
    ]


def last_error(run: Path) -> str:
    if (run / "error.txt").is_file():
        return (run / "error.txt").read_text().strip()[:160]
    for log in sorted(run.glob("*.log")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if "error" in line.lower()]
        if lines:
            return lines[-1].strip()[:160]
    return "no metrics written"


def short(override: str) -> str:
    """An override for a label: a path value shortened to its last part (`dataset.root=.../omniglot`)."""
    key, _, value = override.partition("=")
    return f"{key}=.../{Path(value).name}" if "/" in value else override


# Overrides that say how a run was driven, not what it trained: left out of configs (seeds of one config group
# together whatever budget each call had) and of the curves' labels.
BOOKKEEPING = ("trainer.resume", "trainer.minutes", "trainer.log_every", "trainer.val_every", "hydra.")


def differing(records: list, ignore: tuple = ()) -> list:
    """Per record, its overrides whose key differs between the records (a value, or being set at all)."""
    keys = {}
    for r in records:
        for o in r["overrides"]:
            key, _, value = o.partition("=")
            keys.setdefault(key, set()).add(value)
    varying = {
        k
        for k, values in keys.items()
        if not k.startswith(ignore)
        and (len(values) > 1 or any(k not in {o.partition("=")[0] for o in r["overrides"]} for r in records))
    }
    return [[short(o) for o in r["overrides"] if o.partition("=")[0] in varying] for r in records]


def label_runs(records: list) -> None:
    """Name each record by the overrides that differ between runs (or its directory name when none differ), and
    its config by those that change what was trained other than the seed."""
    for r, parts, trained in zip(records, differing(records), differing(records, BOOKKEEPING)):
        r["label"] = " ".join(parts) or Path(r["run"]).name
        r["config"] = " ".join(p for p in trained if not p.startswith("seed="))


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
        groups.setdefault((r["config"], r["test"]), []).append(r)
    merged = []
    for (config, test), group in groups.items():

        def mean(key):
            values = [g[key] for g in group if g[key] is not None]
            return sum(values) / len(values) if values else None

        tests = [g["test_mean"] for g in group if g["test_mean"] is not None]
        single = len(tests) == 1
        merged.append(
            {
                **group[0],
                "label": f"{config or 'all'} (n={len(group)})",
                "test_mean": mean("test_mean"),
                "test_ci95": group[0]["test_ci95"] if single else t_interval(tests) if tests else None,
                "ci": group[0]["ci"] if single else f"95% t interval over {len(tests)} seeds" if tests else None,
                "n_seeds": len(group),
                "best_val": mean("best_val"),
                "final_val": mean("final_val"),
                "wall_time_s": mean("wall_time_s"),
                "tasks_per_sec": mean("tasks_per_sec"),
                "status": ", ".join(sorted({g["status"] for g in group})),
                "val_curves": [g["val_curve"] for g in group],
            }
        )
    return merged


def cells(r: dict) -> list:
    """The display strings of a record's table row."""

    def number(v, digits=4):
        return "" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)

    shown = {field: number(r.get(field)) for _, field in COLUMNS}
    shown["label"], shown["test"], shown["machine"], shown["status"] = (
        r["label"],
        r["test"] or "",
        r["machine"] or "",
        r["status"],
    )
    shown["wall_time_s"] = number(r["wall_time_s"], 5)
    if r["test_mean"] is not None:
        shown["test_mean"] = f"{r['test_mean']:.4f} ± {r['test_ci95']:.4f}"
    return [shown[field] for _, field in COLUMNS]


def plot(records: list, path: Path, grouped: bool) -> None:
    """Validation metric vs step: one panel per validation protocol (metric and training setting), one line with
    markers per run or config (band: min-max over seeds), each labelled by what differs within its panel."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    protocols = sorted({r["protocol"] for r in records if r["metric"] and r["val_curve"]})
    if not protocols:
        raise MetaexpError("None of these runs has validation metrics to plot yet.")
    columns = min(3, len(protocols))
    rows = math.ceil(len(protocols) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(7 * columns, 5.5 * rows), squeeze=False)
    for axis in axes.flat[len(protocols) :]:
        axis.set_visible(False)
    for axis, name in zip(axes.flat, protocols):
        panel = [r for r in records if r["protocol"] == name and any(r.get("val_curves") or [r["val_curve"]])]
        # One line per run (per config when grouped): a run's evaluations in several settings share its curve.
        panel = list({r["label"]: r for r in panel}.values())
        names = [r["label"] for r in panel] if grouped else [" ".join(p) for p in differing(panel, BOOKKEEPING)]
        for r, label in zip(panel, names):
            curves = [c for c in (r.get("val_curves") if grouped else [r["val_curve"]]) if c]
            steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
            values = [[dict(c)[s] for c in curves] for s in steps]
            label = textwrap.fill(label or Path(r["run"]).name, 48, max_lines=3, placeholder=" ...")
            (line,) = axis.plot(steps, [sum(v) / len(v) for v in values], marker="o", markersize=4, label=label)
            if len(curves) > 1:
                axis.fill_between(
                    steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2, color=line.get_color()
                )
        every = [step for r in panel for step, _ in r["val_curve"]]
        if min(every) > 0 and max(every) > 100 * min(every):
            axis.set_xscale("log")  # a 2-minute run beside a full schedule: both readable
        else:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        axis.set_xlabel("meta-training step")
        axis.set_ylabel(f"validation {name.split(',')[0]}")
        axis.set_title(f"validation: {name}" + (" (mean; band: min-max over seeds)" if grouped else ""))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    with replacing(path) as file:  # a full disk leaves the old picture, never a cut one
        figure.savefig(file, format="png", dpi=110, bbox_inches="tight")


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
    if presets or any(r["preset"] for r in records):
        tables, tasks = preset_tables()
        attach_published(records, tables)
        if presets:
            records += preset_records(records, tables, tasks)
    return records


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
        writer = csv.DictWriter(out, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        sys.stdout.write(out.getvalue())
    elif args.json:
        sys.stdout.write(json.dumps([{k: r.get(k) for k in FIELDS} for r in records], indent=2) + "\n")
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
