"""Meta Networks meta-training speed: the vectorised `metanet` against the loop reference of tests/test_metanet.py
(Python loops over support chunks, support examples and queries), one forward + backward per meta-batch, random
Omniglot-shaped tasks with 10 queries per class, float32, metaexp's tasks vmapped in the chunks training uses on
this device (`trainer.task_chunk=auto`), its generators compiled from coordinatewise.c where a C compiler is (the
header line says which ran); both take each chunk's (each task's) backward before the next, as the
training step does, and both run under the allocator setting of the `metaexp` command (glibc keeps freed memory
for reuse; `--glibc-defaults` leaves glibc as it is, where the loop pays a page fault per fresh page). Prints
tasks/s for each setting. `--device cuda` (the GPU call's) runs both on the card and adds the whole training step
under `trainer.cuda_graph=true` (Adam, the preset's clip at 10), which has no loop counterpart."""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_metanet import reference_task_loss  # noqa: E402

from metaexp.__main__ import keep_freed_memory  # noqa: E402
from metaexp.algorithms.coordinatewise import compiled  # noqa: E402
from metaexp.algorithms.metanet import MetaNet  # noqa: E402
from metaexp.backbones.metanet_conv import MetaNetConv  # noqa: E402
from metaexp.engine import MetaStep, task_chunk_size  # noqa: E402
from metaexp.objectives import CLASSIFICATION  # noqa: E402
from metaexp.samplers import TaskBatch  # noqa: E402

QUERIES = 10


def random_tasks(ways: int, tasks: int, device: torch.device) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways)
    return TaskBatch(torch.rand(tasks, ways, 1, 28, 28, generator=g), labels.expand(tasks, -1).contiguous(),
                     torch.rand(tasks, ways * QUERIES, 1, 28, 28, generator=g),
                     labels.repeat_interleave(QUERIES).expand(tasks, -1).contiguous()).to(device)  # fmt: skip


def rate(step, tasks: int, seconds: float, device: torch.device) -> float:
    """Tasks/s of `step` after one warm-up call (a CUDA graph's capture), the device's queue drained."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        sync()
        done += tasks
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--glibc-defaults", action="store_true", help="leave glibc's allocator at its defaults")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not args.glibc_defaults:
        keep_freed_memory()
    torch.manual_seed(0)
    allocator = "glibc defaults" if args.glibc_defaults else "freed memory kept, as the metaexp command"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    generators = "coordinatewise.c, compiled" if compiled(torch.empty(0, device=device)) else "torch ops"
    print(
        f"device: {device.type} ({card}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"allocator: {allocator}, metaexp's generators: {generators}"
    )
    graph_column = f"{'cuda_graph step/s':>19}" if device.type == "cuda" else ""
    print(f"{'setting':<26}{'loop tasks/s':>14}{'metaexp tasks/s':>17}{'ratio':>8}{graph_column}")
    for ways in (5, 20):
        algorithm = MetaNet(MetaNetConv(ways), CLASSIFICATION)
        params = {k: v.to(device).requires_grad_() for k, v in algorithm.init_params().items()}
        for tasks in (1, 16):
            batch = random_tasks(ways, tasks, device)

            chunk = task_chunk_size("auto", device, batch)
            meta_step = MetaStep(algorithm, params, torch.optim.SGD(params.values()), device=device)

            def ours():
                meta_step.backward(batch, step=0, chunk=chunk)

            def loop():
                for task in zip(*batch):
                    (reference_task_loss(params, *task) / tasks).backward()

            reference, vectorised = rate(loop, tasks, args.seconds, device), rate(ours, tasks, args.seconds, device)
            name = f"{ways}-way 1-shot, meta-batch {tasks}"
            graphed = f"{graph_rate(algorithm, params, batch, args.seconds):>19.2f}" if device.type == "cuda" else ""
            print(f"{name:<26}{reference:>14.2f}{vectorised:>17.2f}{vectorised / reference:>7.1f}x{graphed}")


def graph_rate(algorithm, params: dict, batch: TaskBatch, seconds: float) -> float:
    """Tasks/s of the whole training step (forward, backward, clip, Adam) captured once and replayed."""
    weights = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    optimizer = torch.optim.Adam(weights.values(), 1e-3, capturable=True)
    step = MetaStep(algorithm, weights, optimizer, device=batch.support_x.device, cuda_graph=True, grad_clip=10.0)
    return rate(lambda: step(batch, 0), len(batch), seconds, batch.support_x.device)


if __name__ == "__main__":
    main()
