"""MAML meta-training throughput and peak memory: metaexp's vmapped engine vs learn2learn's clone/adapt loop,
side by side on the same task shapes and the same model (learn2learn's OmniglotCNN shape: Conv-4, 64 filters).

    python benchmarks/bench_engine.py [--device cpu|cuda] [--cuda-graph] [--compile] [--seconds 20] [--configs a b c]

Each (configuration, implementation) runs in its own process so that peak memory is its own.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CONFIGS = {  # name: (ways, shots, queries per class, meta-batch, inner steps)
    "a": (5, 1, 1, 32, 1),
    "b": (20, 1, 1, 16, 5),
    "c": (5, 5, 5, 32, 1),
}


def random_tasks(ways, shots, queries, meta_batch, device):
    import torch
    from metaexp.samplers import TaskBatch

    g = torch.Generator(device).manual_seed(0)

    def images(n):
        return torch.rand(meta_batch, n, 1, 28, 28, generator=g, device=device)

    def labels(k):
        return torch.arange(ways, device=device).repeat_interleave(k).expand(meta_batch, -1).contiguous()

    return TaskBatch(images(ways * shots), labels(shots), images(ways * queries), labels(queries))


def metaexp_step(config, device, cuda_graph, batches=None, compile=False):
    """One timed step: a fixed random meta-batch, or a fresh one from `batches()` each step."""
    import torch
    from metaexp.algorithms.maml import MAML
    from metaexp.engine import MetaStep
    from metaexp.backbones.conv4 import Conv4
    from metaexp.objectives import CLASSIFICATION

    ways, shots, queries, meta_batch, steps = config
    algorithm = MAML(Conv4(ways), CLASSIFICATION, inner_lr=0.4, inner_steps=steps)
    params = {k: v.to(device).requires_grad_() for k, v in algorithm.init_params().items()}
    optimizer = torch.optim.Adam(params.values(), lr=1e-3, capturable=cuda_graph)
    step = MetaStep(
        algorithm,
        params,
        optimizer,
        torch.device(device),
        cuda_graph=cuda_graph,
        compile=compile,
        task_chunk=None if compile else "auto",
    )
    fixed = random_tasks(ways, shots, queries, meta_batch, device)
    return lambda: step(batches() if batches else fixed, 0)


def learn2learn_step(config, device, cuda_graph, batches=None, compile=False):
    """learn2learn's loop over tasks; `batches()` gives a fresh list of (sx, sy, qx, qy) tasks each step."""
    import torch
    import torch.nn.functional as F
    import learn2learn as l2l

    ways, shots, queries, meta_batch, steps = config
    model = l2l.vision.models.OmniglotCNN(ways).to(device)
    maml = l2l.algorithms.MAML(model, lr=0.4, first_order=False)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    fixed = random_tasks(ways, shots, queries, meta_batch, device)

    def step():
        optimizer.zero_grad()
        total = 0.0
        for sx, sy, qx, qy in batches() if batches else zip(*fixed):
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(F.cross_entropy(learner(sx), sy))
            total = total + F.cross_entropy(learner(qx), qy)
        (total / meta_batch).backward()
        optimizer.step()

    return step


def measure(impl, name, device, seconds, cuda_graph, compile):
    """Run one (implementation, configuration) and print a JSON line of tasks/s and peak memory."""
    import torch

    config = CONFIGS[name]
    step = {"metaexp": metaexp_step, "learn2learn": learn2learn_step}[impl](config, device, cuda_graph, compile=compile)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tasks_per_sec = rate(step, seconds, config[3], sync)
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    print(json.dumps({"impl": impl, "config": name, "tasks_per_sec": tasks_per_sec, "peak_mb": peak / 2**20}))


def rate(fn, seconds, per_call, sync):
    """Items per second of `fn` (each call yields `per_call`) over at least `seconds`, after one warm-up call."""
    fn()
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        fn()
        count += 1
        if count % 5 == 0:
            sync()
    sync()
    return count * per_call / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--cuda-graph", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile metaexp's meta-loss (whole batch)")
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return measure(*args.one, args.device, args.seconds, args.cuda_graph, args.compile)
    import torch

    card = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPU cores"
    print(
        f"device: {args.device} ({card}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda_graph={args.cuda_graph}, "
        f"compile={args.compile}"
    )
    print(
        f"{'config':<34}{'learn2learn tasks/s':>20}{'metaexp tasks/s':>17}{'ratio':>8}"
        f"{'l2l peak MB':>13}{'metaexp peak MB':>17}"
    )
    for name in args.configs:
        results = {}
        for impl in ("learn2learn", "metaexp"):
            ours = impl == "metaexp"
            command = (
                [sys.executable, __file__, "--one", impl, name, "--device", args.device, "--seconds", str(args.seconds)]
                + (["--cuda-graph"] if args.cuda_graph and ours else [])
                + (["--compile"] if args.compile and ours else [])
            )
            out = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            results[impl] = (
                json.loads(lines[-1])
                if lines
                else {
                    "tasks_per_sec": float("nan"),
                    "peak_mb": float("nan"),
                    "error": out.stderr.strip().splitlines()[-1:],
                }
            )
        ways, shots, queries, meta_batch, steps = CONFIGS[name]
        label = f"({name}) {ways}w{shots}s q{queries} mb{meta_batch} {steps} step"
        l2l_rate, ours = results["learn2learn"]["tasks_per_sec"], results["metaexp"]["tasks_per_sec"]
        print(
            f"{label:<34}{l2l_rate:>20.1f}{ours:>17.1f}{ours / l2l_rate:>7.1f}x"
            f"{results['learn2learn']['peak_mb']:>13.0f}{results['metaexp']['peak_mb']:>17.0f}"
        )
        for impl, r in results.items():
            if "error" in r:
                print(f"    {impl} failed: {r['error']}")


if __name__ == "__main__":
    main()
