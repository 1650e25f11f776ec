"""The one parameter count of every model."""

from __future__ import annotations

from torch import nn


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``), as the papers count model sizes.

    Frozen tensors registered as parameters are left out: Crystalformer's reference code keeps
    3 fixed statistics per layer as ``nn.Parameter(requires_grad=False)`` (12 numbers in 4
    layers), which its own ``sum(p.numel() for p in model.parameters())`` includes; they are
    constants, not learned weights."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
