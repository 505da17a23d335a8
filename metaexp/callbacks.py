"""Hydra callbacks: the end-of-sweep report of failed jobs."""
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from metaexp.logs import console


class SweepReport(Callback):
    """After a sweep, list each failed job's directory and error, and exit non-zero if any failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failures = sorted(Path(config.hydra.sweep.dir).glob("*/error.txt"))
        if failures:
            console.print(f"[bold red]{len(failures)} job(s) of the sweep failed[/bold red]; the others finished "
                          f"(`metaexp summarize {config.hydra.sweep.dir}` tabulates them all):")
            for path in failures:
                console.print(f"  {path.parent}: {path.read_text().strip()}", highlight=False, soft_wrap=True)
            raise SystemExit(1)
