"""Fully connected network with ReLU, e.g. the 1-40-40-1 sinusoid regressor of Finn et al. (2017)."""

from torch import nn


class MLP(nn.Module):
    def __init__(self, out_features: int | None = 1, in_features: int = 1, hidden=(40, 40)):
        super().__init__()
        layers, width = [], in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.features = nn.Sequential(nn.Flatten(), *layers)
        self.head = nn.Linear(width, out_features) if out_features else nn.Identity()
        self.embedding_size = width

    def forward(self, x):
        return self.head(self.features(x))
