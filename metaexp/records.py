"""Run records: what a run directory holds (config, metrics, task description, machine, eval reports), read
as plain data (YAML and JSON, never imported or run) into one `Record` per run and test setting."""

import json
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from metaexp.errors import MetaexpError
from metaexp.logs import read_metrics


@dataclass
class Record:
    """One row of a results table: a run in one test setting (or a config's seeds averaged, or a preset's
    setting that no run has tested yet). The test fields are None where the run has no evaluation."""

    run: str
    label: str = ""
    config: str = ""
    preset: str | None = None
    overrides: list = field(default_factory=list)
    metric: str | None = None
    higher_is_better: bool | None = None
    protocol: str | None = None  # the validation protocol (task family, metric, setting): curves of one compare
    algorithm: str = ""  # the algorithm's class name, which names a learning curve
    val_curve: list = field(default_factory=list)  # (step, value) of the validation rows
    val_curves: list | None = None  # one val_curve per seed, for a config averaged over seeds
    test: str | None = None  # the test setting's name (`5w1s`, `return_1steps`)
    test_mean: float | None = None
    test_ci95: float | None = None
    ci: str | None = None  # what test_ci95 is an interval over
    episodes: int | None = None
    n_seeds: int = 1
    published: float | None = None
    best_val: float | None = None
    final_val: float | None = None
    steps: int = 0
    wall_time_s: float | None = None
    tasks_per_sec: float | None = None
    machine: str | None = None
    status: str = ""


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


def read_run(run: Path) -> tuple:
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
        raise BadRun("task.json is missing (a run started before metaexp wrote one, or one that never started)")
    try:
        described = json.loads(path.read_text())
        str(described["setting"]), str(described["metric"]), bool(described["higher_is_better"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BadRun(f"task.json is not a metaexp task description ({type(error).__name__})") from error
    return described


def component(config: dict, group: str) -> str:
    """The class name a run's config instantiates for `group` (`Omniglot`, `MAML`)."""
    return str((config.get(group) or {}).get("_target_", "")).rsplit(".", 1)[-1]


def describe(run: Path) -> list:
    """One Record per evaluation of a run (at least one, with the test fields empty)."""
    config, overrides, rows = read_run(run)
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
    base = Record(
        run=str(run),
        overrides=[o for o in overrides if not o.startswith("hydra.")],
        preset=next((o.partition("=")[2] for o in overrides if o.startswith("experiment=")), None),
        metric=metric,
        higher_is_better=higher,
        protocol=f"{component(config, 'dataset')}: {metric}, {family['setting']}",
        algorithm=component(config, "algorithm"),
        val_curve=[(r["step"], r[metric]) for r in val],
        best_val=(max if higher else min)(r[metric] for r in val) if val else None,
        final_val=val[-1][metric] if val else None,
        steps=steps,
        wall_time_s=max((r["elapsed_s"] for r in rows if r.get("elapsed_s") is not None), default=None),
        # The median lap, as `metaexp train` prints it: laps leave validation time out (metaexp.logs.Stopwatch).
        tasks_per_sec=statistics.median(laps) if laps else None,
        machine=machine(run),
        status=status,
    )
    evals = sorted(run.glob("eval*.json"))
    if not evals:
        return [base]
    own_norm = (config.get("test") or {}).get("norm", "episode")
    return [replace(base, **tested) for path in evals for tested in test_fields(read_report(path), metric, own_norm)]


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
        for o in r.overrides:
            key, _, value = o.partition("=")
            keys.setdefault(key, set()).add(value)
    varying = {
        k
        for k, values in keys.items()
        if not k.startswith(ignore)
        and (len(values) > 1 or any(k not in {o.partition("=")[0] for o in r.overrides} for r in records))
    }
    return [[short(o) for o in r.overrides if o.partition("=")[0] in varying] for r in records]


def label_runs(records: list) -> None:
    """Name each record by the overrides that differ between runs (or its directory name when none differ), and
    its config by those that change what was trained other than the seed."""
    for r, parts, trained in zip(records, differing(records), differing(records, BOOKKEEPING)):
        r.label = " ".join(parts) or Path(r.run).name
        r.config = " ".join(p for p in trained if not p.startswith("seed="))
