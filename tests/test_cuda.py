"""The engine on a GPU: MAML and MetaNet on CUDA against the CPU in float64, a captured CUDA graph against the
eager step, and bf16 steps that stay finite and near fp32. `ci/gpu_call.sh` runs these first on a GPU
machine (`-m cuda`); on a machine without CUDA each is skipped, saying so."""

import pytest
import torch

from conftest import random_batch
from metaexp.algorithms.maml import MAML
from metaexp.algorithms.metanet import MetaNet
from metaexp.backbones.conv4 import Conv4
from metaexp.backbones.metanet_conv import MetaNetConv
from metaexp.engine import MetaStep
from metaexp.objectives import CLASSIFICATION

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (ci/gpu_call.sh runs it on one)"),
]
CUDA = torch.device("cuda")


def meta_gradient(algorithm, params: dict, batch, device, dtype) -> tuple:
    """(outer loss, flat meta-gradient) of one meta-batch, computed on `device` in `dtype`."""
    weights = {k: v.to(device, dtype).requires_grad_() for k, v in params.items()}
    outer, _, _ = algorithm.meta_loss(weights, batch.to(device, dtype))
    grads = torch.autograd.grad(outer, list(weights.values()), allow_unused=True)
    flat = torch.cat(
        [(g if g is not None else torch.zeros_like(w)).reshape(-1) for g, w in zip(grads, weights.values())]
    )
    return outer.double().cpu(), flat.double().cpu()


def small(name: str):
    """MAML on a 16-filter Conv-4 or MetaNet on 16-filter twin networks, 5-way."""
    if name == "maml":
        return MAML(Conv4(5, hidden=16), CLASSIFICATION, inner_lr=0.4, inner_steps=2)
    return MetaNet(MetaNetConv(5, hidden=16), CLASSIFICATION)


@pytest.mark.parametrize("name", ["maml", "metanet"])
def test_cuda_meta_gradient_equals_the_cpu_in_float64(name):
    torch.manual_seed(0)
    algorithm = small(name)
    params, batch = algorithm.init_params(), random_batch(3, 5)
    loss_cpu, grad_cpu = meta_gradient(algorithm, params, batch, torch.device("cpu"), torch.float64)
    loss_gpu, grad_gpu = meta_gradient(algorithm, params, batch, CUDA, torch.float64)
    assert loss_gpu.item() == pytest.approx(loss_cpu.item(), rel=1e-9)
    assert ((grad_gpu - grad_cpu).norm() / grad_cpu.norm()).item() < 1e-7
    # In float32, cuDNN's convolutions run in TF32 unless told otherwise: close, not equal.
    loss_fp32, grad_fp32 = meta_gradient(algorithm, params, batch, CUDA, torch.float32)
    assert ((grad_fp32 - grad_cpu).norm() / grad_cpu.norm()).item() < 1e-2


def steps(name: str, cuda_graph: bool, precision: str = "fp32", count: int = 4) -> tuple:
    """Per-step mean query losses and the final weights of `small(name)` on fixed CUDA batches, Adam with the
    gradient norm clipped at 10 (MetaNet's presets)."""
    torch.manual_seed(0)
    algorithm = small(name)
    params = {k: v.to(CUDA).requires_grad_() for k, v in algorithm.init_params().items()}
    optimizer = torch.optim.Adam(params.values(), 1e-3, capturable=cuda_graph)
    step = MetaStep(algorithm, params, optimizer, CUDA, precision=precision, cuda_graph=cuda_graph, grad_clip=10.0)
    batches = [random_batch(4, 5, seed=k).to(CUDA) for k in range(count)]
    losses = [step(batch, k)[0].mean().item() for k, batch in enumerate(batches)]
    return losses, {k: v.detach().cpu() for k, v in params.items()}


@pytest.mark.parametrize("name", ["maml", "metanet"])
def test_a_captured_cuda_graph_steps_as_the_eager_step(name):
    eager_losses, eager = steps(name, cuda_graph=False)
    graph_losses, graph = steps(name, cuda_graph=True)
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    assert all(torch.allclose(eager[k], graph[k], rtol=1e-5, atol=1e-7) for k in eager)


def test_bf16_steps_stay_finite_and_near_fp32():
    fp32_losses, _ = steps("maml", cuda_graph=False)
    bf16_losses, weights = steps("maml", cuda_graph=False, precision="bf16")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert bf16_losses == pytest.approx(fp32_losses, rel=5e-2)
