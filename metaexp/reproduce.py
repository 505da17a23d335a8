"""`metaexp reproduce`: run presets at their full schedules one after another within a time budget, evaluate
each with its preset's test protocol (every setting it publishes a figure for), keep each run's record, and
regenerate the results table.

Each preset trains in `<runs>/<preset>` with `trainer.resume=auto` and `trainer.minutes` set to what is left of
the budget, so an interrupted or budget-stopped preset continues where it stopped on the next call, and a
finished one is only evaluated (once). A record (the `.hydra/` config, `metrics.jsonl`, the eval reports,
`machine.json` and `task.json`; no checkpoints) is copied to `<records>/<preset>` for committing; the table in the
results page is `metaexp summarize` over the records and any `--extra` folders (records made on other machines).

Records are what the project commits, so nothing here loses one: a record is replaced only by a run that
finished and was evaluated, of a schedule at least as long as the record's, swapped in whole, while this
process holds the preset's lock (a second reproduce of the preset is refused). A preset that fails makes the
call exit non-zero naming it; its training child is stopped when this process dies. The page and its curves
are replaced whole or not at all.
"""

import argparse
import contextlib
import ctypes
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra.utils import get_class

from metaexp.errors import MetaexpError
from metaexp.files import current_umask, replacing

TABLE_START, TABLE_END = "<!-- metaexp reproduce: table -->", "<!-- /metaexp reproduce: table -->"
PRESETS_START, PRESETS_END = "<!-- metaexp reproduce: presets -->", "<!-- /metaexp reproduce: presets -->"
RECORD = ("metrics.jsonl", "machine.json", "task.json", ".hydra")


def metaexp(*args: str) -> subprocess.CompletedProcess:
    """One `metaexp` command in a subprocess, its output passed through; it is stopped (SIGTERM, so a training
    run saves its step) when this process dies, even by kill -9, instead of running on as an orphan."""
    return subprocess.run([sys.executable, "-m", "metaexp", *args], preexec_fn=dies_with(os.getpid()))


def dies_with(parent: int):
    """A `preexec_fn` asking Linux to send the child SIGTERM when `parent` dies (prctl PR_SET_PDEATHSIG)."""

    def arrange() -> None:
        with contextlib.suppress(AttributeError, OSError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return arrange


def last_step(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    return max((r["step"] for r in rows), default=0)


def holds_records(folder: Path) -> bool:
    """Whether any run record lies at or under `folder` (summarize refuses a folder without one)."""
    return any(folder.glob("**/.hydra/config.yaml"))


def record_files(folder: Path) -> dict:
    """{relative path: bytes} of what a record holds (run directory: no checkpoints, no logs)."""
    names = [folder / n for n in RECORD] + sorted(folder.glob("eval-*.json"))
    files = [f for n in names for f in ([n] if n.is_file() else sorted(n.rglob("*")) if n.is_dir() else [])]
    return {str(f.relative_to(folder)): f.read_bytes() for f in files if f.is_file()}


def keep_record(run: Path, record: Path) -> bool:
    """Put the run's record (no checkpoints) in place of `record` atomically: it is written beside it first
    and swapped in by rename, so the old record stays whole until the new one is. False if nothing changed."""
    files = record_files(run)
    if record.is_dir() and record_files(record) == files:
        return False
    record.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=record.parent.parent, prefix=f".{record.name}.new-"))
    fresh.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would hide the record from collaborators
    for name, content in files.items():
        (fresh / name).parent.mkdir(parents=True, exist_ok=True)
        (fresh / name).write_bytes(content)
    old = fresh.with_name(fresh.name.replace(".new-", ".old-"))
    if record.exists():
        record.rename(old)
    fresh.rename(record)
    shutil.rmtree(old, ignore_errors=True)
    return True


@contextlib.contextmanager
def held(lock: Path, what: str, wait: bool = False):
    """An advisory lock on the file `lock` while the block runs; a MetaexpError naming `what` when another
    process holds it (or, with `wait`, once it lets go)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as error:
            raise MetaexpError(
                f"another metaexp reproduce is working on {what} right now; this one leaves it alone"
            ) from error
        yield


def between(text: str, start: str, end: str, table: str) -> str:
    """`text` with `table` between the markers `start` and `end` (appended at its end with them the first time)."""
    block = f"{start}\n{table.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        return before + block + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def regenerate(page: Path, folders: list) -> None:
    """Replace the presets' table and the runs' table between their markers of `page` (appended at its end the
    first time) and redraw the
    learning curves beside it (`results_curves.png`), as `metaexp summarize` would (a record it cannot read is
    named, not dropped in silence); each file is replaced whole or not at all."""
    from metaexp import plots, summarize

    records = summarize.table_records(folders, grouped=False, presets=True)
    text = page.read_text() if page.is_file() else "# Results measured by metaexp\n"
    text = between(text, PRESETS_START, PRESETS_END, summarize.preset_markdown(records))
    text = between(text, TABLE_START, TABLE_END, summarize.markdown(records))
    plots.plot(records, page.with_name("results_curves.png"), grouped=False)
    with replacing(page, "w") as file:
        file.write(text)


def main(argv: list) -> None:
    from metaexp.components import resolve_device
    from metaexp.configs import compose
    from metaexp.machine import describe_machine
    from metaexp.presets import expected_time, preset_tables
    from metaexp.records import read_records

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
    if not 0 < args.minutes < math.inf:
        raise MetaexpError(f"--minutes {args.minutes} is not valid: give the time budget in minutes, above 0.")
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
    records = [r for r in records if r.machine == device]
    failed, changed = {}, False
    for preset in [] if args.table_only else presets:
        cfg = compose([f"experiment={preset}", *args.set])
        schedule = {**tasks, preset: (cfg.trainer.steps * cfg.trainer.meta_batch, tasks[preset][1])}
        print(f"== {preset}: {cfg.trainer.steps} steps, {expected_time(preset, schedule, records)}")
        try:
            with held(args.runs / f".{preset}.lock", f"preset {preset}"):
                outcome = run_preset(preset, cfg, tables[preset], deadline, args)
        except MetaexpError as error:
            failed[preset] = str(error)
            print(f"== {preset} did not complete: {error}")
            continue
        if outcome is None:
            break  # the budget is spent
        changed |= outcome
    if args.table_only or changed:
        table(args)
    else:
        print(f"== no record changed; {args.page} is unchanged")
    if failed:
        listed = "; ".join(f"{preset}: {why}" for preset, why in failed.items())
        raise MetaexpError(
            f"{len(failed)} preset(s) did not complete, and their records were left as they were: {listed}."
        )


def table(args) -> None:
    """Regenerate the results page and its curves from the records, one reproduce at a time."""
    folders = [f for f in (args.records, *args.extra) if holds_records(f)]
    if not folders:
        print(f"== no run has been recorded yet; {args.page} is unchanged")
        return
    with held(args.runs / ".page.lock", str(args.page), wait=True):
        regenerate(args.page, folders)
    print(f"== {args.page} regenerated from {', '.join(map(str, folders))}")


def run_preset(preset: str, cfg, figures: dict, deadline: float, args) -> bool | None:
    """Train (or continue) and evaluate one preset; then its record is replaced by the run's, if the run
    finished a schedule at least as long as the record's. True if the record changed, None once the budget is
    spent; a MetaexpError says why the preset failed."""
    run, record, steps = args.runs / preset, args.records / preset, cfg.trainer.steps
    if last_step(run) < steps:
        left = (deadline - time.monotonic()) / 60
        if left < 1:
            print(f"== the budget is spent; {preset} and the presets after it wait for the next call")
            return None
        trained = metaexp("train", f"experiment={preset}", f"trainer.device={args.device}", "trainer.resume=auto",
                          f"trainer.minutes={left:.2f}", f"hydra.run.dir={run}", *args.set)  # fmt: skip
        if trained.returncode:
            raise MetaexpError(f"training {exited(trained.returncode)} ({where(run)})")
        if last_step(run) < steps:
            print(f"== the budget ran out in {preset} at step {last_step(run)}; the next call continues it")
            return None
    evaluate(run, figures, get_class(cfg.sampler._target_), args)
    if last_step(record) > last_step(run):
        print(
            f"== {record} holds a longer schedule ({last_step(record)} steps) than this run's {last_step(run)}; "
            f"it is kept, and this run stays in {run}"
        )
        return False
    return keep_record(run, record)


def exited(code: int) -> str:
    """`exited 2`, or `was killed by SIGKILL` for a negative return code (an out-of-memory kill reads so)."""
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"


def where(run: Path) -> str:
    """Where to read why a run failed: its log, or the output above when it left no run directory."""
    return f"its log: {run / 'train.log'}" if (run / "train.log").is_file() else "its reason is printed above"


def evaluate(run: Path, figures: dict, family: type, args) -> None:
    """`metaexp eval` of the finished run in every setting its preset publishes (once per checkpoint), as the
    task family (`family`, the sampler class) spells each setting's overrides; a MetaexpError if one fails."""
    reports = list(run.glob("eval-*.json"))
    if reports and min(r.stat().st_mtime for r in reports) > (run / "checkpoints" / "best.pt").stat().st_mtime:
        return
    settings = [family.test_overrides(s) for s in figures] or [[]]
    for overrides in sorted({tuple(o) for o in settings if o is not None}):
        tested = metaexp("eval", f"checkpoint={run}", f"trainer.device={args.device}", *overrides, *args.eval_set)
        if tested.returncode:
            raise MetaexpError(f"its evaluation {' '.join(overrides)} {exited(tested.returncode)}")
