"""Run directories: one process at a time, never a new run over an old one, and the config record written
only once the run is accepted.

Hydra would write `.hydra/` into the run directory before the task starts, so a refused run (a used
directory, a config that changed under a resume) would already have overwritten the old run's record;
conf/hydra/default.yaml turns that off (`output_subdir: null`) and `record_config` writes the same three files
after the checks.
"""

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from metaexp.errors import MetaexpError


class RunDirError(MetaexpError):
    """The run directory cannot be used as asked. In a sweep this stops the sweep: every later job would meet
    the same directory trouble."""


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run directory a checkpoint belongs to (`<run>/checkpoints/x.pt` -> `<run>`)."""
    parent = Path(checkpoint_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def checkpoint_file(path: Path) -> Path:
    """A checkpoint path, or a run directory standing for its `checkpoints/last.pt`."""
    path = Path(path)
    return last_checkpoint(path) if path.is_dir() else path


@contextlib.contextmanager
def exclusive(run_dir: Path):
    """Hold an advisory lock on the run directory itself (nothing is written) while the run uses it."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise RunDirError(
                f"Another metaexp process is writing {run_dir} right now. Two runs in one directory would mix "
                f"their checkpoints and metrics, so this one stops without touching it. Wait for the other to "
                f"finish, or give this run its own directory (drop hydra.run.dir / hydra.sweep.dir, or pick a "
                f"new one)."
            ) from error
        yield
    finally:
        os.close(fd)


def previous_run(run_dir: Path) -> str | None:
    """What an earlier run left in `run_dir` (checkpoints or metrics), in words; None when it holds none."""
    checkpoints = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("*.pt"))
    metrics = Path(run_dir) / "metrics.jsonl"
    found = [f"checkpoints/{', '.join(checkpoints)}"] if checkpoints else []
    if metrics.is_file() and metrics.stat().st_size:
        found.append("metrics.jsonl")
    return " and ".join(found) or None


def refuse_used(run_dir: Path) -> None:
    """Refuse a fresh run in a directory that holds an earlier run's checkpoints or metrics."""
    found = previous_run(run_dir)
    if found:
        raise RunDirError(
            f"{run_dir} already holds a run ({found}); a new run there would overwrite it. Continue that run "
            f"with trainer.resume=auto, or start this one in a new directory (drop hydra.run.dir, or pick "
            f"another). Nothing in {run_dir} was changed."
        )


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete half-written checkpoint files that a killed process left (only called under the lock)."""
    for stale in (Path(run_dir) / "checkpoints").glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def record_config(run_dir: Path, cfg: DictConfig) -> None:
    """Write `.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml`, as Hydra itself would (the config alone
    for a run started from Python, outside a Hydra app)."""
    record = Path(run_dir) / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, record / "config.yaml")
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        OmegaConf.save(OmegaConf.create({"hydra": hydra}), record / "hydra.yaml")
        OmegaConf.save(hydra.overrides.task, record / "overrides.yaml")
