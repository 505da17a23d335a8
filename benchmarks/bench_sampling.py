"""Episode sampling and end-to-end meta-training throughput: metaexp's on-device EpisodeSampler vs
learn2learn's TaskDataset (FusedNWaysKShots, LoadData, RemapLabels, ConsecutiveLabels, RandomClassRotation),
on the same Omniglot training tensors (the real data when found, else random tensors of the same shape).

    python benchmarks/bench_sampling.py [--root ../shared/data/omniglot] [--device cpu|cuda] [--seconds 10] [--compile]
"""

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import learn2learn_step, metaexp_step, rate  # noqa: E402

EPISODES = [(5, 1, 1), (5, 1, 15), (20, 5, 15)]


def omniglot_train(root: Path):
    from metaexp.datasets.omniglot import Omniglot
    from metaexp.datasets.store import from_classes

    if (root / "images_background.zip").is_file() or (root / "images_background").is_dir():
        return Omniglot(root, download=False).split("train"), f"real Omniglot from {root}"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1028, 20, 1, 28, 28), generator=g, dtype=torch.uint8)
    return from_classes(list(images), [f"c{i}" for i in range(1028)]), "random tensors (Omniglot not found)"


def learn2learn_taskset(split, ways, shots, queries):
    import learn2learn as l2l

    images = split.images.float().div(255)
    labels = torch.repeat_interleave(torch.arange(len(split.class_names)), split.class_offsets.diff())
    dataset = l2l.data.MetaDataset(torch.utils.data.TensorDataset(images, labels))
    transforms = [
        l2l.data.transforms.FusedNWaysKShots(dataset, n=ways, k=shots + queries),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset),
        l2l.vision.transforms.RandomClassRotation(dataset, [0.0, 90.0, 180.0, 270.0]),
    ]
    return l2l.data.TaskDataset(dataset, task_transforms=transforms, num_tasks=-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--compile", action="store_true", help="torch.compile metaexp's meta-loss end to end")
    args = parser.parse_args()
    from metaexp.samplers import EpisodeSampler

    split, source = omniglot_train(Path(args.root))
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"data: {source}; device: {args.device}; torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPU cores"
    )
    print(f"{'episodes':<22}{'learn2learn ep/s':>18}{'metaexp ep/s':>15}{'ratio':>9}")
    for ways, shots, queries in EPISODES:
        sampler = EpisodeSampler(split, ways, shots, queries, rotations=True, device=device)
        generator = torch.Generator(device).manual_seed(0)
        ours = rate(lambda: sampler.sample(32, generator), args.seconds, 32, sync)
        taskset = learn2learn_taskset(split, ways, shots, queries)
        theirs = rate(taskset.sample, args.seconds, 1, sync)
        print(f"{f'{ways}w{shots}s q{queries}':<22}{theirs:>18.0f}{ours:>15.0f}{ours / theirs:>8.0f}x")

    print(
        f"\nend to end, 5-way 1-shot (1 query per class), meta-batch 32, MAML one second-order step, "
        f"compile={args.compile}:"
    )
    config = (5, 1, 1, 32, 1)
    sampler = EpisodeSampler(split, 5, 1, 1, rotations=True, device=device)
    generator = torch.Generator(device).manual_seed(0)
    ours_step = metaexp_step(
        config, args.device, False, batches=lambda: sampler.sample(32, generator), compile=args.compile
    )
    taskset = learn2learn_taskset(split, 5, 1, 1)
    theirs_step = learn2learn_step(
        config, args.device, False, batches=lambda: [task_tensors(taskset.sample(), device) for _ in range(32)]
    )
    ours = rate(ours_step, args.seconds, 32, sync)
    theirs = rate(theirs_step, args.seconds, 32, sync)
    print(f"learn2learn {theirs:.1f} tasks/s, metaexp {ours:.1f} tasks/s, ratio {ours / theirs:.1f}x")


def task_tensors(task, device):
    """A learn2learn task (images, labels) split into support (first of each class) and query, on `device`."""
    x, y = task
    order = y.argsort(stable=True)
    x, y = x[order].to(device), y[order].to(device)
    first = torch.ones_like(y, dtype=torch.bool)
    first[1:] = y[1:] != y[:-1]
    return x[first], y[first], x[~first], y[~first]


if __name__ == "__main__":
    main()
