"""The worked example of docs/maths.md against the code: a one-weight model, one support and one query point,
MAML's adapted weight, query loss and meta-gradient (second- and first-order, one and two inner steps) as the
page computes them by hand. If the page's numbers and `MAML.task_loss` part, this fails."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import grad

from metaexp.algorithms.maml import MAML
from metaexp.objectives import REGRESSION

PAGE = Path(__file__).resolve().parents[1] / "docs" / "maths.md"


class Line(nn.Module):
    """y = w x: one weight, the page's theta."""

    def __init__(self):
        super().__init__()
        self.features, self.head = nn.Identity(), nn.Linear(1, 1, bias=False)

    def forward(self, x):
        return self.head(self.features(x))


def page_numbers() -> dict:
    """The `name = number` lines of the page's worked example (in its ```text block)."""
    block = PAGE.read_text().split("<!-- worked example -->", 2)[1]
    return {name: float(value) for name, value in re.findall(r"^\s*(\w+) += ([-\d.]+)\s*$", block, re.M)}


@pytest.mark.parametrize("steps, first_order", [(1, False), (1, True), (2, False), (2, True)])
def test_the_worked_example_is_what_maml_computes(steps, first_order):
    numbers = page_numbers()
    maml = MAML(Line(), REGRESSION, inner_lr=numbers["alpha"], inner_steps=steps, first_order=first_order)
    support = torch.tensor([[1.0]]), torch.tensor([[numbers["y_support"]]])
    query = torch.tensor([[1.0]]), torch.tensor([[numbers["y_query"]]])
    params = {"head.weight": torch.tensor([[numbers["theta"]]])}

    def outer(p):
        return maml.task_loss(p, *support, *query, step=0)[0]

    suffix = f"{steps}" + ("_first_order" if first_order else "")
    adapted = maml.adapted_weights(params, *support, steps)["head.weight"]
    assert float(adapted) == pytest.approx(numbers[f"theta_{steps}"], abs=1e-6)
    assert float(outer(params)) == pytest.approx(numbers[f"query_loss_{steps}"], abs=1e-6)
    assert float(grad(outer)(params)["head.weight"]) == pytest.approx(numbers[f"meta_gradient_{suffix}"], abs=1e-6)
