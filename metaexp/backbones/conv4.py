"""The four-block conv net of Vinyals et al. / Finn et al.: Omniglot (stride 2, mean-pooled) and
mini-ImageNet (max-pool, flattened) variants, parameter-compatible with learn2learn's OmniglotCNN / CNN4."""

import torch
from torch import nn

from metaexp.backbones.layers import BatchNorm


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, max_pool: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=1 if max_pool else 2, padding=1)
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.norm = BatchNorm(out_channels)
        self.pool = nn.MaxPool2d(2) if max_pool else nn.Identity()

    def forward(self, x):
        # Under vmap a per-task convolution returns a strided view; contiguous memory makes the rest 30% faster.
        return self.pool(torch.relu(self.norm(self.conv(x).contiguous())))


class SpatialMean(nn.Module):
    def forward(self, x):
        return x.mean(dim=(-2, -1))


class Conv4(nn.Module):
    """`layers` conv blocks of `hidden` filters; the embedding is the spatial mean or the flattened map."""

    def __init__(
        self,
        out_features: int | None,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: int = 64,
        layers: int = 4,
        max_pool: bool = False,
        embedding: str = "mean",
    ):
        super().__init__()
        widths = [in_channels] + [hidden] * layers
        blocks = [ConvBlock(i, o, max_pool) for i, o in zip(widths[:-1], widths[1:])]
        reduce = {"mean": SpatialMean(), "flatten": nn.Flatten()}[embedding]
        self.features = nn.Sequential(*blocks, reduce)
        with torch.no_grad():
            self.embedding_size = self.features(torch.zeros(2, in_channels, image_size, image_size)).shape[-1]
        self.head = nn.Linear(self.embedding_size, out_features) if out_features else nn.Identity()

    def forward(self, x):
        return self.head(self.features(x))
