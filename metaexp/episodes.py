"""Fixed episode sets: JSON files that name the support and query examples of each episode, so that
checkpoints are compared on identical episodes and published episode lists can be replayed.

Format (`"format": "metaexp-episodes/1"`): `{"split": ..., "episodes": [{"support": [ENTRY, ...],
"query": [ENTRY, ...]}, ...]}` where ENTRY is `[ref, label]` or `[ref, label, degrees]`: `ref` is a row index
into the split (classes in the split's order, then examples in file order) or an image path relative to the
JSON file, `label` is 0..ways-1, `degrees` a multiple of 90 to rotate the image by.
"""
import json
from itertools import groupby
from pathlib import Path

import torch

from metaexp.errors import MetaexpError
from metaexp.tasks import TaskBatch, rotate, to_float

FORMAT = "metaexp-episodes/1"


def write_episodes(path: Path, draws: list, shots: int, split: str) -> None:
    """Save the episodes of `draws`, a list of (rows `[B, ways, shots+queries]`, quarter turns `[B, ways]`)."""
    episodes = []
    for rows, quarters in draws:
        for task_rows, task_quarters in zip(rows.tolist(), quarters.tolist()):
            entries = [[[row, label, 90 * turns] for row in class_rows]
                       for label, (class_rows, turns) in enumerate(zip(task_rows, task_quarters))]
            episodes.append({"support": [e for c in entries for e in c[:shots]],
                             "query": [e for c in entries for e in c[shots:]]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, "split": split, "episodes": episodes}) + "\n")


def read_episodes(path: Path, sampler, dataset, meta_batch: int):
    """TaskBatches of the file's episodes (consecutive episodes of one shape batched together)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        episodes = document["episodes"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MetaexpError(f"{path} is not a readable episode file ({type(error).__name__}: {error}). See the "
                           f"format in metaexp/episodes.py, or write one with eval.save_episodes=PATH.") from error
    images = getattr(sampler, "images", None)
    if images is None:
        raise MetaexpError("Fixed episode sets are for classification data sets; this run's sampler has no images.")

    def load(entry):
        ref, label, degrees = entry if len(entry) == 3 else (*entry, 0)
        if not 0 <= label < sampler.ways:
            raise MetaexpError(f"{path}: label {label} is outside 0..{sampler.ways - 1} (sampler.ways={sampler.ways}).")
        if isinstance(ref, int):
            if not 0 <= ref < len(images):
                raise MetaexpError(f"{path}: row {ref} is outside the split ({len(images)} images).")
            image = images[ref].clone()
        else:
            image = dataset.preprocess(path.parent / ref).to(images.device)
            if image.shape != images.shape[1:]:
                raise MetaexpError(f"{path}: {ref} has shape {tuple(image.shape)} after preprocessing; the model "
                                   f"needs {tuple(images.shape[1:])}.")
        if degrees % 90:
            raise MetaexpError(f"{path}: rotation {degrees} is not a multiple of 90 degrees.")
        return rotate(image[None], torch.tensor([degrees // 90 % 4], device=image.device))[0], label

    tasks = []
    for number, episode in enumerate(episodes):
        try:
            parts = [[load(e) for e in episode[name]] for name in ("support", "query")]
        except (KeyError, TypeError, ValueError) as error:
            raise MetaexpError(f"{path}: episode {number} is malformed ({type(error).__name__}: {error}); each "
                               f"needs `support` and `query` lists of [ref, label] or [ref, label, degrees].") from error
        tasks.append([torch.stack([x for x, _ in part]) for part in parts] +
                     [torch.tensor([y for _, y in part], device=images.device) for part in parts])
    for start in range(0, len(tasks), meta_batch):
        group = tasks[start:start + meta_batch]
        for _, run in groupby(group, key=lambda t: (t[0].shape, t[1].shape)):
            sx, qx, sy, qy = (torch.stack(tensors) for tensors in zip(*run))
            yield TaskBatch(to_float(sx), sy, to_float(qx), qy)
