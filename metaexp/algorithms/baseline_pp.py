"""Baseline++ (Chen et al. 2019): Baseline with a cosine classifier, in pretraining and in the head fine-tuned per
episode. As the authors' `distLinear`: features are L2-normalised, each class weight is weight-normalised with a
learnable norm g_c (their `class_wise_learnable_norm`), logits = scale x g_c cos(z, v_c), no bias (their scale:
2 for up to 200 classes, 10 above)."""

import torch
import torch.nn.functional as F

from metaexp.algorithms.baseline import Baseline


class BaselinePlusPlus(Baseline):
    def __init__(self, model, objective, ways: int, scale: float = 10.0, **baseline):
        self.scale = scale
        super().__init__(model, objective, ways, **baseline)

    def fresh_head(self, rows: int, generator: torch.Generator | None = None) -> dict:
        direction = super().fresh_head(rows, generator)["weight"]
        return {"direction": direction, "norm": direction.norm(dim=-1)}  # weight norm starts at the drawn weight

    def classify(self, head: dict, z: torch.Tensor) -> torch.Tensor:
        weight = head["norm"].unsqueeze(-1) * F.normalize(head["direction"], dim=-1)
        return self.scale * F.normalize(z, dim=-1) @ weight.T
