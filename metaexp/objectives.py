"""Per-task loss and score for the two kinds of task: classification and regression."""

import math
import statistics
from typing import Callable

import torch
import torch.nn.functional as F


class Objective:
    """How one task is scored: `loss(pred, y)` to optimise and `score(pred, y)` to report as `metric`;
    `inner_loss`, where given, is the loss of gradient-based inner steps (a policy's can differ from its
    meta-objective in its second derivatives only).

    A plain class, not a dataclass: Hydra would turn a dataclass argument of `instantiate` into a config.
    """

    # `divergence(prediction, y)`: how far a task's policy moved from the one that sampled its query set, for
    # objectives of policies (the constraint of optim=trpo); None for the others.
    divergence = None

    def __init__(
        self,
        metric: str,
        higher_is_better: bool,
        loss: Callable,
        score: Callable,
        task: str = "",
        inner_loss: Callable | None = None,
    ):
        self.metric, self.higher_is_better, self.loss, self.score = metric, higher_is_better, loss, score
        self.task = task or f"{metric} regression"
        self.inner_loss = inner_loss or loss


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


CLASSIFICATION = Objective("accuracy", True, F.cross_entropy, accuracy, task="classification")
REGRESSION = Objective("mse", False, F.mse_loss, F.mse_loss)
# Adaptive control (metaexp.control): trained on the disturbance's squared error (the regression view) or on
# flights, whose RMS tracking error is what every control test reports.
DISTURBANCE = Objective("mse", False, F.mse_loss, F.mse_loss, task="adaptive control")
CONTROL = Objective("rms_error", False, F.mse_loss, F.mse_loss, task="adaptive control")


def mean_ci95(values) -> tuple:
    """Mean and 1.96 * sample std / sqrt(n) of a sequence of numbers."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), 1.96 * std / math.sqrt(len(values))
