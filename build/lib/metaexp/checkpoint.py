"""Checkpoints: atomic save and checked load."""
from pathlib import Path

import torch

from metaexp.errors import MetaexpError
from metaexp.files import replacing
from metaexp.rundir import checkpoint_file

REQUIRED = ("params", "config", "step")


def save(path: Path, payload: dict) -> None:
    """Write `payload` to `path` atomically (metaexp.files.replacing)."""
    with replacing(path) as file:
        torch.save(payload, file)


def load(path) -> dict:
    """Load a checkpoint onto the CPU, or raise a MetaexpError that says what is wrong with it."""
    path = checkpoint_file(path)
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
