"""TaskBatch and the samplers that draw whole meta-batches of tasks with batched tensor ops on the device."""

from typing import NamedTuple

import torch

from metaexp.errors import MetaexpError
from metaexp.objectives import CLASSIFICATION, REGRESSION

ROTATIONS = 4


class TaskBatch(NamedTuple):
    """Support and query sets of B tasks: x `[B, n, ...]`, y `[B, n]` (labels 0..ways-1) or `[B, n, 1]`."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def to(self, device=None, dtype=None) -> "TaskBatch":
        """Move to `device`; cast the floating-point tensors to `dtype`."""

        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return TaskBatch(*(move(t) for t in self))

    def __len__(self) -> int:
        return self.support_x.shape[0]


class RegressionSampler:
    """Draws `shots` support and `queries` query points per task from a regression task family."""

    objective = REGRESSION
    outputs = 1

    def __init__(self, data, shots: int = 10, queries: int = 10, device="cpu"):
        at_least_one(shots=shots, queries=queries)
        self.data, self.shots, self.queries, self.device = data, shots, queries, torch.device(device)

    def sample(self, meta_batch: int, generator: torch.Generator) -> TaskBatch:
        x, y = self.data.sample(meta_batch, self.shots + self.queries, generator, self.device)
        s = self.shots
        return TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:])


class EpisodeSampler:
    """N-way K-shot Q-query episodes from a `ClassSplit` held on the device; rotations add classes (x4).
    `rotations=None` follows the data set (`ClassSplit.rotations`)."""

    objective = CLASSIFICATION

    def __init__(
        self, data, ways: int = 5, shots: int = 1, queries: int = 15, rotations: bool | None = None, device="cpu"
    ):
        at_least_one(ways=ways, shots=shots, queries=queries)
        rotations = data.rotations if rotations is None else rotations
        self.ways, self.shots, self.queries, self.rotations = ways, shots, queries, rotations
        self.outputs = ways
        self.device = torch.device(device)
        if len(data.class_offsets) < 2:
            raise MetaexpError(
                "The split has no classes at all. Check the data set's root and its split settings "
                "(for an image folder: dataset.splits or dataset.ratios)."
            )
        self.images = data.images.to(self.device)
        self.offsets = data.class_offsets.to(self.device)
        counts = self.offsets[1:] - self.offsets[:-1]
        self.counts, self.max_count = counts, int(counts.max())
        self.num_classes = len(counts) * (ROTATIONS if rotations else 1)
        if ways > self.num_classes:
            turned = f" ({len(counts)} x {ROTATIONS} rotations)" if rotations else ""
            raise MetaexpError(
                f"The sampler asks for {ways}-way episodes but the split has only {self.num_classes} classes{turned}. "
                f"Lower sampler.ways or use a split with more classes."
            )
        if shots + queries > int(counts.min()):
            raise MetaexpError(
                f"The sampler asks for {shots} shots + {queries} queries per class but the smallest class of the "
                f"split has {int(counts.min())} examples. Lower sampler.shots or sampler.queries."
            )

    def sample(self, meta_batch: int, generator: torch.Generator) -> TaskBatch:
        return self.episodes(*self.draw(meta_batch, generator))

    def some_images(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` images of the split drawn at random, as floats (for statistics of the training data)."""
        rows = torch.randperm(len(self.images), generator=generator, device=self.device)[:count]
        return to_float(self.images[rows])

    def draw(self, meta_batch: int, generator: torch.Generator) -> tuple:
        """Dataset rows `[B, ways, shots+queries]` and quarter turns `[B, ways]` of a meta-batch."""
        classes = torch.rand(meta_batch, self.num_classes, generator=generator, device=self.device)
        classes = classes.topk(self.ways, dim=1).indices
        base, rotation = classes % len(self.counts), classes // len(self.counts)
        per_class = self.shots + self.queries
        keys = torch.rand(meta_batch, self.ways, self.max_count, generator=generator, device=self.device)
        # Past a class's own examples, a key of 2.0 (above any rand() draw) keeps topk(largest=False) off them.
        keys[torch.arange(self.max_count, device=self.device) >= self.counts[base].unsqueeze(-1)] = 2.0
        rows = self.offsets[base].unsqueeze(-1) + keys.topk(per_class, dim=-1, largest=False).indices
        return rows, rotation

    def episodes(self, rows: torch.Tensor, rotation: torch.Tensor) -> TaskBatch:
        """Build a TaskBatch from dataset rows `[B, ways, shots+queries]` and per-class rotations `[B, ways]`."""
        x = to_float(rotate(self.images[rows], rotation))
        b, ways = rows.shape[:2]
        labels = torch.arange(ways, device=self.device).view(1, ways, 1)
        y = labels.expand(b, ways, rows.shape[2])
        s = self.shots
        support_x, query_x = x[:, :, :s].flatten(1, 2), x[:, :, s:].flatten(1, 2)
        return TaskBatch(support_x, y[:, :, :s].flatten(1), query_x, y[:, :, s:].flatten(1))


def at_least_one(**settings) -> None:
    """Refuse a count below 1 (a negative count would slice tensors from the end and train on nonsense)."""
    for key, value in settings.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MetaexpError(
                f"sampler.{key}={value!r} is not valid: it must be a whole number of 1 or more. "
                f"Set it again on the command line, e.g. sampler.{key}=5."
            )


def rotate(images: torch.Tensor, quarters: torch.Tensor) -> torch.Tensor:
    """Turn images `[..., H, W]` by `quarters` x 90 degrees; `quarters` indexes their leading dimensions."""
    for quarter in range(1, ROTATIONS):
        turned = quarters == quarter
        if turned.any():
            images[turned] = torch.rot90(images[turned], quarter, dims=(-2, -1))
    return images


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as floats in [0, 1]."""
    return images.float().div_(255.0)


SPLITS = ("train", "val", "test")


def task_generator(seed: int, split: str, device, stream: int = 0) -> torch.Generator:
    """The sampling generator for one split (and one rank's `stream`): distinct seeds, so test tasks never
    repeat training tasks of a task family with no fixed split, such as the sinusoid."""
    # Room for 1,000 ranks per (seed, split) before two streams could share a seed.
    return torch.Generator(device).manual_seed((seed * len(SPLITS) + SPLITS.index(split)) * 1000 + stream)
