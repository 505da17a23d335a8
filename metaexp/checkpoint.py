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
            f"(or its run directory), e.g. checkpoint=outputs/2026-01-01/12-00-00/checkpoints/best.pt."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MetaexpError(
            f"{path} is not a readable checkpoint ({reason(error)}). It may be empty, truncated or not written "
            f"by metaexp; use the run's other checkpoint (last.pt or best.pt) or train again."
        ) from error
    if (
        not isinstance(payload, dict)
        or any(key not in payload for key in REQUIRED)
        or not isinstance(payload["config"], dict)
        or not isinstance(payload["params"], dict)
    ):
        raise MetaexpError(
            f"{path} loads but is not a metaexp checkpoint (it needs params and config as mappings, and a step). "
            f"Point at a file that `metaexp train` wrote under <run>/checkpoints/."
        )
    payload["config"] = upgraded(payload["config"])
    return payload


def reason(error: Exception) -> str:
    """The first line of a load error, without torch's advice to load with weights_only=False: that would let
    the file run code, which is what the checked load exists to prevent."""
    first = next(iter(str(error).splitlines()), "")
    if "weights_only" in first or "Weights only load failed" in first:
        first = "it holds objects other than tensors and plain values, which metaexp never writes"
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


# Module paths of metaexp 0.1.0 before the modules took the names of their config groups.
MOVED = {
    "metaexp.models.": "metaexp.backbones.",
    "metaexp.data.": "metaexp.datasets.",
    "metaexp.tasks.": "metaexp.samplers.",
}


def upgraded(config: dict) -> dict:
    """A config saved by an earlier metaexp 0.1.0, in today's form: `_target_`s at their modules' new paths,
    and test.inner_steps as the one key for inner steps at test time (the algorithm held eval_inner_steps: null
    beside it). A current config comes back unchanged."""

    def moved(node):
        if isinstance(node, dict):
            return {k: moved(v) for k, v in node.items()}
        if isinstance(node, str):
            for old, new in MOVED.items():
                if node.startswith(old):
                    return new + node[len(old) :]
        return node

    config = moved(config)
    algorithm = config.get("algorithm") or {}
    if "eval_inner_steps" in algorithm and algorithm["eval_inner_steps"] is None:
        config = {**config, "algorithm": {**algorithm, "eval_inner_steps": "${test.inner_steps}"}}
    return config
