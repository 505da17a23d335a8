"""`metaexp reproduce`: run presets at their full schedules one after another within a time budget, evaluate
each with its preset's test protocol (every setting it publishes a figure for), keep each run's record, and
regenerate the results table.

Each preset trains in `<runs>/<preset>` with `trainer.resume=auto` and `trainer.minutes` set to what is left of
the budget, so an interrupted or budget-stopped preset continues where it stopped on the next call, and a
finished one is only evaluated (once). A record (the `.hydra/` config, `metrics.jsonl`, the eval reports and
`machine.json`; no checkpoints) is copied to `<records>/<preset>` for committing; the table in the results
page is `metaexp summarize` over the records and any `--extra` folders (records made on other machines).
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from metaexp.errors import MetaexpError

TABLE_START, TABLE_END = "<!-- metaexp reproduce: table -->", "<!-- /metaexp reproduce: table -->"
RECORD = ("metrics.jsonl", "machine.json", ".hydra")


def setting_overrides(setting: str) -> list | None:
    """The `metaexp eval` overrides of a published setting: `20w1s` -> 20-way 1-shot, `10shot` -> 10 support
    points; a policy's `return_<k>steps` needs none (one eval reports every step); None if not understood."""
    if match := re.fullmatch(r"(\d+)w(\d+)s", setting):
        return [f"sampler.ways={match[1]}", f"sampler.shots={match[2]}"]
    if match := re.fullmatch(r"(\d+)shot", setting):
        return [f"sampler.shots={match[1]}"]
    if re.fullmatch(r"return_\d+steps", setting):
        return []
    return None


def metaexp(*args: str) -> subprocess.CompletedProcess:
    """One `metaexp` command in a subprocess, its output passed through."""
    return subprocess.run([sys.executable, "-m", "metaexp", *args])


def last_step(run: Path) -> int:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if run.exists() else []
    return max((r["step"] for r in rows), default=0)


def holds_records(folder: Path) -> bool:
    """Whether any run record lies at or under `folder` (summarize refuses a folder without one)."""
    return any(folder.glob("**/.hydra/config.yaml"))


def keep_record(run: Path, record: Path) -> None:
    """Copy what the results page needs (no checkpoints) from a run directory to its record folder."""
    if record.exists():
        shutil.rmtree(record)
    record.mkdir(parents=True)
    for name in RECORD:
        if (run / name).is_dir():
            shutil.copytree(run / name, record / name)
        elif (run / name).is_file():
            shutil.copy2(run / name, record / name)
    for report in run.glob("eval-*.json"):
        shutil.copy2(report, record / report.name)


def summarize(folders: list, *options: str) -> str:
    """The standard output of `metaexp summarize` over the record folders."""
    result = subprocess.run(
        [sys.executable, "-m", "metaexp", "summarize", *map(str, folders), *options], capture_output=True, text=True
    )
    if result.returncode:
        raise MetaexpError(f"metaexp summarize failed on {', '.join(map(str, folders))}: {result.stdout}")
    return result.stdout


def regenerate(page: Path, folders: list) -> None:
    """Replace the table between the markers of `page` (appended at its end the first time) and redraw the
    learning curves beside it (`results_curves.png`)."""
    table = f"{TABLE_START}\n{summarize(folders, '--presets', '--markdown').strip()}\n{TABLE_END}"
    text = page.read_text() if page.is_file() else "# Results measured by metaexp\n"
    if TABLE_START in text and TABLE_END in text:
        before, rest = text.split(TABLE_START, 1)
        text = before + table + rest.split(TABLE_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    page.write_text(text)
    summarize(folders, "--plot", str(page.with_name("results_curves.png")))


def main(argv: list) -> None:
    from metaexp.api import compose
    from metaexp.loop import describe_machine
    from metaexp.components import resolve_device
    from metaexp.summarize import expected_time, preset_tables, read_records

    parser = argparse.ArgumentParser(prog="metaexp reproduce", description=__doc__)
    parser.add_argument("presets", nargs="*", help="conf/experiment presets (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--minutes", type=float, default=60.0, help="the time budget of this call")
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="run directories (checkpoints)")
    parser.add_argument("--records", type=Path, default=Path("results/records"), help="records to commit")
    parser.add_argument("--extra", type=Path, nargs="*", default=[], help="more record folders for the table")
    parser.add_argument("--page", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every train command")
    parser.add_argument("--eval-set", nargs="*", default=[], help="overrides for every eval command")
    parser.add_argument("--table-only", action="store_true", help="only regenerate the table from the records")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + 60 * args.minutes
    tables, tasks = preset_tables()
    unknown = [p for p in args.presets if p not in tables]
    if unknown:
        raise MetaexpError(
            f"No preset named {', '.join(unknown)} in conf/experiment; `metaexp train --help` lists them."
        )
    presets = args.presets or list(tables)
    device = describe_machine(resolve_device(args.device))["device"]
    # Earlier records made on this kind of device time each preset (a table with no records reads as none).
    records = read_records([args.records])[0] if holds_records(args.records) else []
    records = [r for r in records if r["machine"] == device]
    for preset in [] if args.table_only else presets:
        cfg = compose([f"experiment={preset}", *args.set])
        run = args.runs / preset
        schedule = {**tasks, preset: (cfg.trainer.steps * cfg.trainer.meta_batch, tasks[preset][1])}
        print(f"== {preset}: {cfg.trainer.steps} steps, {expected_time(preset, schedule, records)}")
        if last_step(run) < cfg.trainer.steps and not train(preset, run, cfg.trainer.steps, deadline, args):
            break
        if last_step(run) == cfg.trainer.steps:
            evaluate(preset, run, tables[preset], args)
        keep_record(run, args.records / preset)
    folders = [f for f in (args.records, *args.extra) if holds_records(f)]
    if not folders:
        print(f"== no run has been recorded yet; {args.page} is unchanged")
        return
    regenerate(args.page, folders)
    print(f"== {args.page} regenerated from {', '.join(map(str, folders))}")


def train(preset: str, run: Path, steps: int, deadline: float, args) -> bool:
    """Train (or continue) one preset within what is left of the budget; False once the budget is spent."""
    left = (deadline - time.monotonic()) / 60
    if left < 1:
        print(f"== the budget is spent; {preset} and the presets after it wait for the next call")
        return False
    trained = metaexp("train", f"experiment={preset}", f"trainer.device={args.device}", "trainer.resume=auto",
                      f"trainer.minutes={left:.2f}", f"hydra.run.dir={run}", *args.set)  # fmt: skip
    if trained.returncode:
        print(f"== {preset} failed (exit {trained.returncode}); its run directory says why: {run}")
        return True
    if last_step(run) < steps:
        print(f"== the budget ran out in {preset} at step {last_step(run)}; the next call continues it")
        return False
    return True


def evaluate(preset: str, run: Path, figures: dict, args) -> None:
    """`metaexp eval` of the finished run in every setting its preset publishes (once per checkpoint)."""
    reports = list(run.glob("eval-*.json"))
    if reports and min(r.stat().st_mtime for r in reports) > (run / "checkpoints" / "best.pt").stat().st_mtime:
        return
    settings = [setting_overrides(s) for s in figures] or [[]]
    for overrides in {tuple(o) for o in settings if o is not None}:
        metaexp("eval", f"checkpoint={run}", f"trainer.device={args.device}", *overrides, *args.eval_set)
