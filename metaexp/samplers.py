"""TaskBatch, the protocol every task sampler keeps, and the samplers that draw whole meta-batches of tasks
with batched tensor ops on the device."""

import re
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple

import torch

from metaexp.episodes import load_episodes, write_episodes
from metaexp.errors import MetaexpError
from metaexp.objectives import CLASSIFICATION, REGRESSION, Objective
from metaexp.schema import SPLITS, at_least

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

    def split(self, tasks: int) -> list["TaskBatch"]:
        """Consecutive meta-batches of `tasks` tasks (the last may hold fewer)."""
        return [TaskBatch(*parts) for parts in zip(*(t.split(tasks) for t in self))]


@dataclass
class TestResult:
    """What a task family's test protocol measured: one score per test task, their query losses where the
    protocol has them, any further fields of the report (a return curve over inner steps), and the metric
    where the test measures another than training does (None: the objective's)."""

    scores: torch.Tensor
    losses: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)
    metric: str | None = None


class TaskSampler:
    """What a task family says about itself, through its sampler: the loop, `metaexp eval`, `metaexp summarize`
    and `metaexp reproduce` ask these instead of probing attributes or reading config keys. A new task family
    is a data set (any class with `split(name)`) and a subclass of this:

    - `objective`: the per-task loss, the metric and its direction (`metaexp.objectives.Objective`);
      `outputs`: how many numbers the backbone's head must predict per example.
    - `sample(meta_batch, generator)`: a `TaskBatch` of that many tasks, on the sampler's device.
    - `label_format`: the short name of a test setting, spelled from the sampler's settings (`{ways}w{shots}s`
      gives `5w1s`), and `report_format` the longer one of a report's file name; `label`, `report_label` and
      `test_overrides` (the eval overrides of a published setting's name) follow from them. A setting they do
      not spell out that differs from the run's own test is appended to the name: `-gamma0.5`.
    - `describe()`: the one line a run prints about its tasks.
    - `objective_from(dataset, settings)`: the objective without a sampler (a saved run's, rebuilt).
    - `test(score, options, dataset, generator)`: the protocol `metaexp eval` follows (default: fresh tasks
      scored after adaptation).
    - `acts` and `bind(algorithm, params, inner_steps)`: for families whose sampling runs the live policy
      (meta-RL rollouts); `drain()`: the family's own fields of a train row.
    - `view`: which view of the task family it gives, where there are several; the algorithm names the views it
      trains on (`Algorithm.views`). `per_split`: it is told the split it draws from (`split=`).
    """

    objective: Objective
    outputs: int
    label_format: str
    report_format: str | None = None  # None: as label_format
    acts = False  # True where drawing a task runs the current policy: bind() hands it over
    view = ""  # which view of its task family a sampler gives, where there are several (adaptive control's two)
    per_split = False  # True where the sampler draws differently per split: build_sampler then passes `split`

    @classmethod
    def label(cls, settings: Mapping) -> str:
        return cls.label_format.format_map(settings)

    @classmethod
    def report_label(cls, settings: Mapping) -> str:
        return cls.report_format.format_map(settings) if cls.report_format else cls.label(settings)

    @classmethod
    def spelled(cls) -> set:
        """The settings a report's name spells out."""
        return set(re.findall(r"{(\w+)}", cls.report_format or cls.label_format))

    @classmethod
    def objective_from(cls, dataset: Callable, settings: Mapping) -> Objective:
        """The objective of this family's tasks without drawing any (`metaexp.load_run`); `dataset()` builds
        the data set, for a family whose objective it shapes."""
        return cls.objective

    @classmethod
    def test_overrides(cls, name: str) -> list | None:
        """The `metaexp eval` overrides of the published setting `name`, `label`'s inverse (`20w1s` ->
        sampler.ways=20, sampler.shots=1); None where the name is not one of this family's."""
        fields = re.findall(r"{(\w+)}", cls.label_format)
        match = re.fullmatch(re.sub(r"\\{\w+\\}", r"(\\d+)", re.escape(cls.label_format)), name)
        return [f"sampler.{key}={value}" for key, value in zip(fields, match.groups())] if match else None

    def sample(self, meta_batch: int, generator: torch.Generator) -> TaskBatch:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def bind(self, algorithm, params: dict, inner_steps: int) -> None:
        """Hand the sampler the algorithm and its live parameters (a no-op for families that do not act)."""

    def drain(self) -> dict:
        return {}

    def training_images(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` training inputs for the batch-norm statistics of test.norm=training."""
        raise MetaexpError(
            f"test.norm=training normalises with statistics of training images, and {self.objective.task} tasks "
            f"have none. Use test.norm=episode."
        )

    def test(self, score: Callable, options, dataset, generator: torch.Generator) -> TestResult:
        """`metaexp eval`'s protocol: `options.episodes` fresh tasks (`options` is the eval config), scored by
        `score(batches) -> (losses, scores)` after adaptation."""
        refuse_episode_files(options)
        losses, scores = score(sampled_batches(self, options.episodes, options.meta_batch, generator))
        return TestResult(scores, losses)


def refuse_episode_files(options) -> None:
    if options.episodes_file or options.save_episodes:
        raise MetaexpError("eval.episodes_file and eval.save_episodes are for classification episodes only.")


def departures(sampler: type, standard: Mapping, used: Mapping) -> str:
    """`-gamma2-later_rate0.1`: the settings of a test that differ from the run's own test (`standard`) and that
    the setting's name does not spell out; empty for the standard test."""
    spelled = sampler.spelled()
    changed = sorted(k for k, v in used.items() if k not in spelled and k != "_target_" and standard.get(k) != v)
    return "".join(f"-{key}{used[key]}" for key in changed)


def sampled_batches(sampler, episodes: int, meta_batch: int, generator: torch.Generator) -> Iterable[TaskBatch]:
    """`episodes` tasks in meta-batches of at most `meta_batch`."""
    for start in range(0, episodes, meta_batch):
        yield sampler.sample(min(meta_batch, episodes - start), generator)


class RegressionSampler(TaskSampler):
    """Draws `shots` support and `queries` query points per task from a regression task family (a data set
    with `sample(tasks, points, generator, device) -> (x, y)`)."""

    objective = REGRESSION
    outputs = 1
    label_format, report_format = "{shots}shot", "{shots}shot{queries}q"

    def __init__(self, data, shots: int = 10, queries: int = 10, device="cpu"):
        at_least("sampler.shots", shots, 1, whole=True)
        at_least("sampler.queries", queries, 1, whole=True)
        self.data, self.shots, self.queries, self.device = data, shots, queries, torch.device(device)

    def describe(self) -> str:
        return f"{self.shots}-shot regression, {self.queries} query points"

    def sample(self, meta_batch: int, generator: torch.Generator) -> TaskBatch:
        x, y = self.data.sample(meta_batch, self.shots + self.queries, generator, self.device)
        s = self.shots
        return TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:])


class EpisodeSampler(TaskSampler):
    """N-way K-shot Q-query episodes from a `ClassSplit` held on the device; rotations add classes (x4).
    `rotations=None` follows the data set (`ClassSplit.rotations`)."""

    objective = CLASSIFICATION
    label_format, report_format = "{ways}w{shots}s", "{ways}w{shots}s{queries}q"

    def __init__(
        self, data, ways: int = 5, shots: int = 1, queries: int = 15, rotations: bool | None = None, device="cpu"
    ):
        for key, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            at_least(f"sampler.{key}", value, 1, whole=True)
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

    def describe(self) -> str:
        return f"{self.ways}-way {self.shots}-shot, {self.queries} queries per class"

    def sample(self, meta_batch: int, generator: torch.Generator) -> TaskBatch:
        return self.build(*self.draw(meta_batch, generator))

    def test(self, score: Callable, options, dataset, generator: torch.Generator) -> TestResult:
        """Fresh episodes, or those of an episode file (`eval.episodes_file`, drawn by any library); the
        episodes drawn can be saved to one (`eval.save_episodes`)."""
        if options.episodes_file:
            listed = load_episodes(Path(options.episodes_file))
            losses, scores = score(self.listed(Path(options.episodes_file), listed, dataset, options.meta_batch))
            return TestResult(scores, losses)
        if not options.save_episodes:
            return super().test(score, options, dataset, generator)
        draws = []
        losses, scores = score(self.recorded(options.episodes, options.meta_batch, generator, draws))
        write_episodes(Path(options.save_episodes), draws, self.shots, options.split)
        return TestResult(scores, losses)

    def listed(self, path: Path, episodes: list, dataset, meta_batch: int) -> Iterable[TaskBatch]:
        """TaskBatches of the checked `episodes` of the file `path` (consecutive episodes of one shape batched
        together); an entry is a row of this split or an image file the data set preprocesses."""

        def load(entry):
            ref, label, degrees = entry if len(entry) == 3 else (*entry, 0)
            if isinstance(ref, int):
                if not 0 <= ref < len(self.images):
                    raise MetaexpError(f"{path}: row {ref} is outside the split ({len(self.images)} images).")
                image = self.images[ref].clone()
            else:
                image = dataset.preprocess(path.parent / ref).to(self.device)
                if image.shape != self.images.shape[1:]:
                    raise MetaexpError(
                        f"{path}: {ref} has shape {tuple(image.shape)} after preprocessing; the model "
                        f"needs {tuple(self.images.shape[1:])}."
                    )
            return rotate(image[None], torch.tensor([degrees // 90 % 4], device=image.device))[0], label

        tasks = []
        for episode in episodes:
            parts = [[load(e) for e in episode[name]] for name in ("support", "query")]
            tasks.append(
                [torch.stack([x for x, _ in part]) for part in parts]
                + [torch.tensor([y for _, y in part], device=self.device) for part in parts]
            )
        for start in range(0, len(tasks), meta_batch):
            for _, run in groupby(tasks[start : start + meta_batch], key=lambda t: (t[0].shape, t[1].shape)):
                sx, qx, sy, qy = (torch.stack(tensors) for tensors in zip(*run))
                yield TaskBatch(to_float(sx), sy, to_float(qx), qy)

    def recorded(self, episodes: int, meta_batch: int, generator: torch.Generator, draws: list):
        """As `sampled_batches`, appending each meta-batch's (rows, rotations) draw to `draws`."""
        for start in range(0, episodes, meta_batch):
            draws.append(self.draw(min(meta_batch, episodes - start), generator))
            yield self.build(*draws[-1])

    def training_images(self, count: int, generator: torch.Generator) -> torch.Tensor:
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

    def build(self, rows: torch.Tensor, rotation: torch.Tensor) -> TaskBatch:
        """Build a TaskBatch from dataset rows `[B, ways, shots+queries]` and per-class rotations `[B, ways]`."""
        x = to_float(rotate(self.images[rows], rotation))
        b, ways = rows.shape[:2]
        labels = torch.arange(ways, device=self.device).view(1, ways, 1)
        y = labels.expand(b, ways, rows.shape[2])
        s = self.shots
        support_x, query_x = x[:, :, :s].flatten(1, 2), x[:, :, s:].flatten(1, 2)
        return TaskBatch(support_x, y[:, :, :s].flatten(1), query_x, y[:, :, s:].flatten(1))


class PretrainSampler(EpisodeSampler):
    """The data path of pretrain-then-adapt (Baseline, Baseline++, SimpleShot, RFS): on the training split,
    plain mini-batches of `batch_size` images drawn uniformly from the whole split, each labelled by its class
    among all the split's classes (quarter turns as new classes where the data set counts them), one mini-batch
    per "task" with an empty support set; on validation and test, the same episodes as `EpisodeSampler`, so
    `metaexp eval` scores these methods on every other algorithm's episodes. `flip` and `crop_padding` augment
    the training images as the papers do for natural images: a horizontal flip of half of them, and a crop of
    the original size at a random offset after zero-padding each side by `crop_padding` pixels."""

    view = "pretrain"
    per_split = True

    def __init__(
        self, data, ways: int = 5, shots: int = 1, queries: int = 15, rotations: bool | None = None,
        batch_size: int = 64, flip: bool = False, crop_padding: int = 0, split: str = "train", device="cpu",
    ):  # fmt: skip
        super().__init__(data, ways, shots, queries, rotations, device)
        at_least("sampler.batch_size", batch_size, 1, whole=True)
        at_least("sampler.crop_padding", crop_padding, 0, whole=True)
        self.batch_size, self.pretraining = batch_size, split == "train"
        self.flip, self.crop_padding = flip, crop_padding
        self.classes = self.num_classes  # the pretraining classifier's outputs
        if self.pretraining:
            self.outputs = self.classes

    def describe(self) -> str:
        if not self.pretraining:
            return super().describe()
        return f"mini-batches of {self.batch_size} images over all {self.classes} training classes"

    def sample(self, meta_batch: int, generator: torch.Generator) -> TaskBatch:
        if not self.pretraining:
            return super().sample(meta_batch, generator)
        shape = (meta_batch, self.batch_size)
        rows = torch.randint(len(self.images), shape, generator=generator, device=self.device)
        turns = ROTATIONS if self.rotations else 1
        rotation = torch.randint(turns, shape, generator=generator, device=self.device)
        base = torch.searchsorted(self.offsets, rows, right=True) - 1  # each row's class within the split
        x = self.augmented(to_float(rotate(self.images[rows], rotation)).flatten(0, 1), generator).unflatten(0, shape)
        labels = base + rotation * len(self.counts)  # a turned class is class + turns x (classes of the split)
        return TaskBatch(x[:, :0], labels[:, :0], x, labels)

    def augmented(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Images `[n, C, H, W]` flipped and cropped as the settings say (unchanged by default)."""
        n, _, h, w = x.shape
        if self.flip:
            flipped = torch.rand(n, generator=generator, device=self.device) < 0.5
            x = torch.where(flipped.view(n, 1, 1, 1), x.flip(-1), x)
        if self.crop_padding:
            pad = self.crop_padding
            offsets = torch.randint(2 * pad + 1, (2, n, 1), generator=generator, device=self.device)
            rows = (offsets[0] + torch.arange(h, device=self.device)).view(n, 1, h, 1)
            cols = (offsets[1] + torch.arange(w, device=self.device)).view(n, 1, 1, w)
            padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
            images, channels = (torch.arange(k, device=self.device) for k in x.shape[:2])
            x = padded[images.view(n, 1, 1, 1), channels.view(1, -1, 1, 1), rows, cols]
        return x


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


def task_generator(seed: int, split: str, device, stream: int = 0) -> torch.Generator:
    """The sampling generator for one split (and one rank's `stream`): distinct seeds, so test tasks never
    repeat training tasks of a task family with no fixed split, such as the sinusoid."""
    # Room for 1,000 ranks per (seed, split) before two streams could share a seed.
    return torch.Generator(device).manual_seed((seed * len(SPLITS) + SPLITS.index(split)) * 1000 + stream)
