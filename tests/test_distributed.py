"""torchrun with 2 gloo processes: after k steps the weights equal one process's on the same total
meta-batch and the same tasks (each rank's tasks come from its rank-derived generator), for an even split and
an uneven one (5 tasks: 3 + 2, averaged with weights)."""

import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import ROOT
from metaexp.components import build, build_algorithm, build_sampler
from metaexp.engine import MetaStep
from metaexp.samplers import TaskBatch, task_generator

OVERRIDES = [
    "trainer.steps=3",
    "trainer.log_every=1",
    "trainer.val_every=3",
    "trainer.val_tasks=5",
    "trainer.device=cpu",
    "seed=3",
]
WORLD = 2


def single_process_weights(meta_batch, steps=None):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*OVERRIDES, f"trainer.meta_batch={meta_batch}"])
    torch.manual_seed(cfg.seed)
    dataset = build(cfg.dataset, "dataset")
    sampler = build_sampler(cfg, dataset, "train", torch.device("cpu"))
    algorithm = build_algorithm(cfg, sampler)
    params = {k: v.requires_grad_() for k, v in algorithm.init_params().items()}
    optimizer = build(cfg.optim, "optimizer", params=list(params.values()))
    step = MetaStep(algorithm, params, optimizer, torch.device("cpu"))
    generators = [task_generator(cfg.seed, "train", "cpu", rank) for rank in range(WORLD)]
    shares = [meta_batch // WORLD + (rank < meta_batch % WORLD) for rank in range(WORLD)]
    for k in range(cfg.trainer.steps if steps is None else steps):
        parts = [sampler.sample(share, g) for share, g in zip(shares, generators)]
        step(TaskBatch(*(torch.cat(tensors) for tensors in zip(*parts))), k)
    return {k: v.detach() for k, v in params.items()}


@pytest.mark.slow
@pytest.mark.parametrize("meta_batch", [4, 5])
def test_two_gloo_ranks_equal_one_process(tmp_path, meta_batch):
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={WORLD}",
            "-m",
            "metaexp",
            "train",
            *OVERRIDES,
            f"trainer.meta_batch={meta_batch}",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3 and len(state["generator"]) == WORLD
    reference = single_process_weights(meta_batch)
    distributed = state["params"]
    moved = max((reference[k] - distributed[k]).abs().max().item() for k in reference)
    error = max(((reference[k] - distributed[k]).norm() / reference[k].norm()).item() for k in reference)
    print(f"\ntorchrun 2 x gloo vs 1 process, {state['step']} steps: max |diff| {moved:.3e}, max relative {error:.3e}")
    assert error < 1e-6
    initial = single_process_weights(meta_batch, steps=0)
    assert max((initial[k] - distributed[k]).abs().max().item() for k in initial) > 1e-4, "training moved nothing"
    assert sum(1 for _ in (run / "metrics.jsonl").open()) == 4, "rank 0 alone writes metrics (3 train + 1 val)"
