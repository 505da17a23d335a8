"""Run records: metrics.jsonl (always), optional TensorBoard/W&B/MLflow sinks, the rich progress bar and
the end-of-run summary table."""

import contextlib
import json
import logging
import logging.handlers
import math
import time
from pathlib import Path

from rich import get_console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = get_console()


class MetricsFile:
    """Appends one JSON object per line to `<run>/metrics.jsonl`, flushed at once; a NaN or infinite value is
    written as null (JSON has no NaN)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.file = self.path.open("a")

    def write(self, row: dict) -> None:
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        self.file.write(json.dumps(row, allow_nan=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class RunLog:
    """This process's log records, held in memory until the run is accepted and then written, with all later
    ones, to `<run>/train.log`: a run refused for a used directory or a bad value appends nothing to the log of
    the run already there."""

    FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] %(message)s"

    def __init__(self):
        self.root = logging.getLogger()
        # flushLevel above CRITICAL: nothing leaves memory before `open` gives it a file.
        self.handler = logging.handlers.MemoryHandler(capacity=10**6, flushLevel=logging.CRITICAL + 1)
        self.root.addHandler(self.handler)
        # In a notebook (no Hydra logging set up) metaexp's INFO records would not even be made: train.log
        # gets them all the same, and the level is restored when the run ends.
        self.package, self.level = logging.getLogger("metaexp"), logging.getLogger("metaexp").level
        if self.package.getEffectiveLevel() > logging.INFO:
            self.package.setLevel(logging.INFO)

    def open(self, path: Path) -> None:
        file = logging.FileHandler(path)
        file.setFormatter(logging.Formatter(self.FORMAT))
        self.handler.setTarget(file)
        self.handler.flush()
        self.root.removeHandler(self.handler)
        self.handler = file
        self.root.addHandler(file)

    def close(self) -> None:
        self.root.removeHandler(self.handler)
        self.handler.close()
        self.package.setLevel(self.level)


def scalars(row: dict) -> dict:
    """The numeric values of a metrics row, less its step."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}


class TensorBoardLogger:
    """Each metrics row as TensorBoard scalars `<split>/<key>` at its step."""

    def __init__(self, log_dir):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def write(self, row: dict) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(f"{row['split']}/{key}", value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Each metrics row to Weights & Biases (`mode: offline` writes to <run>/wandb, no account needed)."""

    def __init__(self, project: str, mode: str, dir, config: dict | None = None):
        import wandb

        self.run = wandb.init(project=project, mode=mode, dir=str(dir), config=config)

    def write(self, row: dict) -> None:
        self.run.log({f"{row['split']}/{k}": v for k, v in scalars(row).items()}, step=row["step"])

    def close(self) -> None:
        self.run.finish()


class MLflowLogger:
    """Each metrics row to MLflow (a `sqlite:` tracking URI keeps it local)."""

    def __init__(self, tracking_uri: str, experiment: str):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        mlflow.start_run()

    def write(self, row: dict) -> None:
        self.mlflow.log_metrics({f"{row['split']}_{k}": v for k, v in scalars(row).items()}, step=row["step"])

    def close(self) -> None:
        self.mlflow.end_run()


def read_metrics(path: Path) -> list:
    """The rows of a metrics.jsonl file; a torn last line (a killed run) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class TrainingProgress:
    """A rich progress bar with step, loss, the task metric, tasks/s and ETA."""

    def __init__(self, total: int, start: int, metric: str, enabled: bool = True):
        self.metric = metric
        self.bar = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[metric]}  {task.fields[speed]} tasks/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.task = self.bar.add_task("train", total=total, completed=start, loss="-", metric="-", speed="-")

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def update(self, step: int, row: dict | None = None) -> None:
        fields = {}
        if row is not None:
            fields = dict(
                loss=f"{row['loss']:.4f}",
                metric=f"{self.metric} {row[self.metric]:.4f}",
                speed=rate(row["tasks_per_sec"]),
            )
        self.bar.update(self.task, completed=step, **fields)


def rate(value: float) -> str:
    """Three significant figures, without an exponent: 0.412, 41.2, 4,120."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def summary_table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


class Stopwatch:
    """Seconds since start, and throughput since the last `lap`, not counting time spent `aside`."""

    def __init__(self, elapsed: float = 0.0):
        self.start = time.perf_counter() - elapsed
        self.last, self.last_count = time.perf_counter(), 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def lap(self, count: int) -> float:
        """Tasks per second since the last lap: the figure every `tasks_per_sec` in metrics.jsonl holds."""
        now = time.perf_counter()
        rate = (count - self.last_count) / max(now - self.last, 1e-9)
        self.last, self.last_count = now, count
        return rate

    @contextlib.contextmanager
    def aside(self):
        """Time spent in this block (validation, checkpoints) is left out of the next lap's rate."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.last += time.perf_counter() - started
