"""Layers safe under `vmap` + second-order `grad`."""

import contextlib

import torch
from torch import nn
from torch.func import functional_call


class BatchNorm(nn.Module):
    """Batch norm over the batch's own statistics, written with plain ops and one fused affine pass.

    torch's native batch_norm has a wrong batching rule for second-order gradients under vmap; this is exact.
    Inside `training_statistics` it normalises with statistics of training images instead (`fixed`).
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.fixed = None  # (mean, var) while training_statistics is active; None: each batch's own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.fixed if self.fixed is not None else batch_statistics(x)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul((self.bias - mean * scale).view(shape), x, scale.view(shape))


def batch_statistics(x: torch.Tensor) -> tuple:
    """Per-channel mean and (biased) variance over every dimension but the channels (dimension 1)."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims)
    return mean, (x * x).mean(dims) - mean * mean


@contextlib.contextmanager
def training_statistics(model: nn.Module, params: dict, images: torch.Tensor, batch: int = 500):
    """Within the block, every BatchNorm of `model` normalises with statistics of `images` (training images)
    under the weights `params`, not with each batch's own: the non-transductive test of ProtoNets, Matching
    Networks and MetaOptNet, where a query's prediction does not depend on the other queries. The statistics are
    the means over batches of `batch` images of each layer's batch mean and variance (a "precise BN" estimate
    of the running averages those papers keep), computed layer by layer as the images pass."""
    norms = [m for m in model.modules() if isinstance(m, BatchNorm)]
    try:
        for m, statistics in zip(norms, estimate(model, params, images, norms, batch)):
            m.fixed = statistics
        yield
    finally:
        for m in norms:
            m.fixed = None


def estimate(model: nn.Module, params: dict, images: torch.Tensor, norms: list, batch: int) -> list:
    """Each of `norms`' (mean, var) averaged over the batches of `images`."""
    seen = {m: [] for m in norms}
    hooks = [m.register_forward_hook(lambda module, inputs, _: seen[module].append(batch_statistics(inputs[0])))
             for m in norms]  # fmt: skip
    try:
        with torch.no_grad():
            for chunk in images.split(batch):
                functional_call(model, params, (chunk,))
    finally:
        for hook in hooks:
            hook.remove()
    return [tuple(torch.stack(values).mean(0) for values in zip(*seen[m])) for m in norms]
