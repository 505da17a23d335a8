"""Backbones: each is `features` (an embedding network) followed by a linear `head` (none when
`out_features` is null, for the embedding-only algorithms)."""

import torch
from torch.func import functional_call


def with_prefix(params: dict, prefix: str) -> dict:
    """The entries of `params` under `prefix`, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def predict(model: torch.nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    """The model's output for `x` with weights `params` (names as in `model.named_parameters()`)."""
    return functional_call(model, params, (x,))


def embed(model: torch.nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    """The `features` embedding for `x` with weights `params`."""
    return functional_call(model.features, with_prefix(params, "features."), (x,))


def head(model: torch.nn.Module, params: dict, z: torch.Tensor) -> torch.Tensor:
    """The linear `head` applied to embeddings `z`."""
    return functional_call(model.head, with_prefix(params, "head."), (z,))
