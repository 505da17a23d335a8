"""The sinusoid regression task family of Finn et al. (2017), section 5.1: y = A sin(x - phase)."""

import math

import torch


class Sinusoid:
    """Amplitude U[amplitude], phase U[phase], inputs U[inputs]; every split is the same infinite family."""

    def __init__(self, amplitude=(0.1, 5.0), phase=(0.0, math.pi), inputs=(-5.0, 5.0)):
        self.amplitude, self.phase, self.inputs = tuple(amplitude), tuple(phase), tuple(inputs)

    def split(self, name: str) -> "Sinusoid":
        return self

    def sample(self, tasks: int, points: int, generator: torch.Generator, device) -> tuple:
        """x, y of shape `[tasks, points, 1]`."""

        def uniform(bounds, *shape):
            low, high = bounds
            return torch.rand(*shape, generator=generator, device=device) * (high - low) + low

        amplitude, phase = uniform(self.amplitude, tasks, 1, 1), uniform(self.phase, tasks, 1, 1)
        x = uniform(self.inputs, tasks, points, 1)
        return x, amplitude * torch.sin(x - phase)
