"""The twin network of Meta Networks (Munkhdalai & Yu 2017), as in the authors' MetaNetFull.py: `layers` x
[3x3 conv without bias, ReLU, 2x2 max-pool with ceil mode], then fc hidden->hidden, ReLU, fc hidden->ways, no
biases and no batch norm. Omniglot: 5 x 64 filters, 28 -> 14 -> 7 -> 4 -> 2 -> 1 (without ceil mode the map
collapses to 0x0 at the fifth pool).

MetaNetPartial.py's mini-ImageNet variant: 32 filters, batch norm on the first `norm_layers` convs (3), and fast
weights only on the last `fast_convs` convs (2) and the two fc layers; 84 -> 42 -> 21 -> 11 -> 6 -> 3 gives a
288-d embedding. `augmented` names the weights MetaNet gives fast weights to."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from metaexp.backbones.layers import BatchNorm


class MetaNetConv(nn.Module):
    def __init__(
        self,
        out_features: int,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: int = 64,
        layers: int = 5,
        norm_layers: int = 0,
        fast_convs: int | None = None,
    ):
        super().__init__()
        widths = [in_channels] + [hidden] * layers
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1, bias=False) for i, o in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(BatchNorm(hidden) for _ in range(norm_layers))
        fast_convs = layers if fast_convs is None else fast_convs
        self.augmented = [f"convs.{i}.weight" for i in range(layers - fast_convs, layers)] + [
            "fc1.weight",
            "head.weight",
        ]
        side = image_size
        for _ in range(layers):
            side = math.ceil(side / 2)
        self.embedding_size = hidden * side * side
        self.fc1 = nn.Linear(self.embedding_size, hidden, bias=False)
        self.head = nn.Linear(hidden, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = F.max_pool2d(torch.relu(self.norms[i](x) if i < len(self.norms) else x), 2, ceil_mode=True)
        return self.head(torch.relu(self.fc1(x.flatten(-3))))
