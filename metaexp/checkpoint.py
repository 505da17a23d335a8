"""Checkpoints: atomic save (temp file, then rename), checked load, and finding the one to resume from."""
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from metaexp.errors import MetaexpError

REQUIRED = ("params", "config", "step")


def save(path: Path, payload: dict) -> None:
    """Write `payload` to `path` so that a crash never leaves a half-written file in its place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path) -> dict:
    """Load a checkpoint onto the CPU, or raise a MetaexpError that says what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise MetaexpError(
            f"No checkpoint at {path}. Pass the path of a run's checkpoints/last.pt or checkpoints/best.pt "
            f"(or its run directory), e.g. checkpoint=outputs/2026-01-01/12-00-00/checkpoints/best.pt.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MetaexpError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"It may be truncated or not written by metaexp; use the run's other checkpoint (last.pt or "
            f"best.pt) or train again.") from error
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED):
        raise MetaexpError(
            f"{path} loads but is not a metaexp checkpoint (it lacks {', '.join(REQUIRED)}). "
            f"Point at a file that `metaexp train` wrote under <run>/checkpoints/.")
    return payload


def comparable(cfg) -> dict:
    """The parts of a config that must match for a run to continue another: all but `trainer.resume`."""
    container = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    container["trainer"] = {k: v for k, v in container["trainer"].items() if k != "resume"}
    return container


def find_resume(cfg: DictConfig, run_dir: Path, outputs_root: Path) -> Path | None:
    """The checkpoint `trainer.resume` names: a path, or `auto` for this run's last.pt or else the newest
    last.pt under `outputs_root` of a run with the same config."""
    resume = cfg.trainer.resume
    if resume in (None, False, "", "none"):
        return None
    if resume != "auto":
        path = Path(str(resume))
        return path / "checkpoints" / "last.pt" if path.is_dir() else path
    own = run_dir / "checkpoints" / "last.pt"
    if own.is_file():
        return own
    wanted = comparable(cfg)
    for candidate in sorted(outputs_root.glob("**/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime,
                            reverse=True):
        try:
            if comparable(load(candidate)["config"]) == wanted:
                return candidate
        except MetaexpError:
            continue
    return None
