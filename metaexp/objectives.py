"""Per-task loss and score for the two kinds of task: classification and regression."""
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Objective:
    """How one task is scored: `loss(pred, y)` to optimise and `score(pred, y)` to report as `metric`."""

    metric: str
    higher_is_better: bool
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


CLASSIFICATION = Objective("accuracy", True, F.cross_entropy, accuracy)
REGRESSION = Objective("mse", False, F.mse_loss, F.mse_loss)
