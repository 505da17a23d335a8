"""ResNet-12 of Lee et al. (2019) / Oreshkin et al. (2018): four residual blocks, average-pooled embedding."""

from torch import nn
import torch.nn.functional as F

from metaexp.backbones.layers import BatchNorm


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        widths = [in_channels, out_channels, out_channels, out_channels]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1, bias=False) for i, o in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(BatchNorm(out_channels) for _ in range(3))
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.shortcut_norm = BatchNorm(out_channels)

    def forward(self, x):
        out = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            out = norm(conv(out))
            if i < 2:
                out = F.leaky_relu(out, 0.1)
        out = F.leaky_relu(out + self.shortcut_norm(self.shortcut(x)), 0.1)
        return F.max_pool2d(out, 2)


class ResNet12(nn.Module):
    def __init__(self, out_features: int | None, in_channels: int = 3, channels=(64, 160, 320, 640)):
        super().__init__()
        widths = [in_channels, *channels]
        blocks = [ResidualBlock(i, o) for i, o in zip(widths[:-1], widths[1:])]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding_size = channels[-1]
        self.head = nn.Linear(self.embedding_size, out_features) if out_features else nn.Identity()

    def forward(self, x):
        return self.head(self.features(x))
