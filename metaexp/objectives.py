"""Per-task loss and score for the two kinds of task: classification and regression."""

from typing import Callable

import torch
import torch.nn.functional as F


class Objective:
    """How one task is scored: `loss(pred, y)` to optimise and `score(pred, y)` to report as `metric`.

    A plain class, not a dataclass: Hydra would turn a dataclass argument of `instantiate` into a config.
    """

    def __init__(self, metric: str, higher_is_better: bool, loss: Callable, score: Callable, task: str = ""):
        self.metric, self.higher_is_better, self.loss, self.score = metric, higher_is_better, loss, score
        self.task = task or f"{metric} regression"


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


CLASSIFICATION = Objective("accuracy", True, F.cross_entropy, accuracy, task="classification")
REGRESSION = Objective("mse", False, F.mse_loss, F.mse_loss)
