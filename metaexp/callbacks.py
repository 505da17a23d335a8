"""Hydra callbacks: a check that the output location can be written, and the end-of-sweep report."""

import os
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.markup import escape

from metaexp.logs import console


class OutputCheck(Callback):
    """Refuse, in one paragraph, a run or sweep directory that cannot be created, before Hydra tries to create it
    (Hydra would print a traceback)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


def check_writable(path: Path, setting: str) -> None:
    """Exit 2 unless `path` exists as a directory or its nearest existing ancestor is a writable directory."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return
    reason = "is a file, not a folder" if not existing.is_dir() else "is not writable"
    console.print(
        f"[bold red]error:[/bold red] Cannot create the output directory {escape(str(path))}: "
        f"{escape(str(existing))} {reason}. Point the outputs at a writable folder with "
        f"paths.output_dir=DIR (or {setting}=DIR).",
        highlight=False,
        soft_wrap=True,
    )
    raise SystemExit(2)


class SweepReport(Callback):
    """After a sweep, list each failed job's directory and error, and exit non-zero if any failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failures = sorted(Path(config.hydra.sweep.dir).glob("*/error.txt"))
        if failures:
            console.print(
                f"[bold red]{len(failures)} job(s) of the sweep failed[/bold red]; the others finished "
                f"(`metaexp summarize {config.hydra.sweep.dir}` tabulates them all):"
            )
            for path in failures:
                console.print(f"  {path.parent}: {escape(path.read_text().strip())}", highlight=False, soft_wrap=True)
            raise SystemExit(1)
