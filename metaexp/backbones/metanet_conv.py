"""The twin network of Meta Networks (Munkhdalai & Yu 2017), as in the authors' MetaNetFull.py: `layers` x
[3x3 conv without bias, ReLU, 2x2 max-pool with ceil mode], then fc hidden->hidden, ReLU, fc hidden->ways, no
biases and no batch norm. Omniglot: 5 x 64 filters, 28 -> 14 -> 7 -> 4 -> 2 -> 1 (without ceil mode the map
collapses to 0x0 at the fifth pool)."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class MetaNetConv(nn.Module):
    def __init__(
        self, out_features: int, in_channels: int = 1, image_size: int = 28, hidden: int = 64, layers: int = 5
    ):
        super().__init__()
        widths = [in_channels] + [hidden] * layers
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1, bias=False) for i, o in zip(widths, widths[1:]))
        side = image_size
        for _ in range(layers):
            side = math.ceil(side / 2)
        self.embedding_size = hidden * side * side
        self.fc1 = nn.Linear(self.embedding_size, hidden, bias=False)
        self.head = nn.Linear(hidden, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.max_pool2d(torch.relu(conv(x)), 2, ceil_mode=True)
        return self.head(torch.relu(self.fc1(x.flatten(-3))))
