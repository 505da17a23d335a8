"""The Gaussian policy of MAML's reinforcement-learning experiments (Finn et al. 2017, section 5.3): an MLP
(2 x 100 ReLU) gives the action mean; the log standard deviation is one learned vector, the same in every
state. Its output is the mean and log-std side by side, so the algorithms treat it as any other backbone and
the inner loop adapts both."""

import torch
from torch import nn

from metaexp.backbones.mlp import MLP


class GaussianPolicy(nn.Module):
    is_policy = True

    def __init__(self, in_features: int = 2, out_features: int = 2, hidden=(100, 100), log_std: float = 0.0):
        super().__init__()
        self.in_features = in_features
        mlp = MLP(out_features=out_features, in_features=in_features, hidden=hidden)
        self.features, self.head = mlp.features, mlp.head
        self.log_std = nn.Parameter(torch.full((out_features,), float(log_std)))

    def forward(self, x):
        mean = self.head(self.features(x))
        return torch.cat([mean, self.log_std.expand_as(mean)], -1)
