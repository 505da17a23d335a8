"""Fully connected network, e.g. the 1-40-40-1 ReLU sinusoid regressor of Finn et al. (2017) or the 6-32-32
tanh regressor of an adaptive controller (Richards et al. 2021)."""

from torch import nn

from metaexp.errors import MetaexpError


ACTIVATIONS = ("ReLU", "Tanh", "ELU", "GELU", "SiLU", "Softplus")


class MLP(nn.Module):
    def __init__(
        self,
        out_features: int | None = 1,
        in_features: int = 1,
        hidden=(40, 40),
        activation: str = "ReLU",
        flatten: bool = True,
        init_std: float | None = None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise MetaexpError(
                f"backbone.activation={activation!r} is not one of {', '.join(ACTIVATIONS)} (torch.nn's)."
            )
        layers, width = [], in_features
        for size in hidden:
            layers += [nn.Linear(width, size), getattr(nn, activation)()]
            width = size
        # flatten=false keeps the leading dimensions: a regressor applied to states [..., in_features].
        self.features = nn.Sequential(*([nn.Flatten()] if flatten else []), *layers)
        self.head = nn.Linear(width, out_features) if out_features else nn.Identity()
        if init_std is not None:  # weights and biases from N(0, init_std^2), as Richards et al. 2021 (0.1)
            for parameter in self.parameters():
                nn.init.normal_(parameter, std=init_std)
        self.embedding_size = width

    def forward(self, x):
        return self.head(self.features(x))
