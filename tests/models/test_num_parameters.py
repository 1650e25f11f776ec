"""One parameter count for every backbone: trainable parameters only."""

import pytest
import torch

from crystalframes.models import build_model, num_parameters


def test_frozen_parameters_and_buffers_are_not_counted():
    net = torch.nn.Linear(3, 2)  # 8 trainable
    net.frozen = torch.nn.Parameter(torch.zeros(5), requires_grad=False)
    net.register_buffer("stats", torch.zeros(7))
    assert num_parameters(net) == 8


@pytest.mark.parametrize("spec", ["ecomformer:none@cpu_small", "crystalformer:none@cpu_small"])
def test_every_backbone_counts_the_same_way(spec):
    """Crystalformer's count used to include its frozen statistics, eComFormer's did not."""
    model = build_model(spec)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert num_parameters(model) == trainable
    for p in model.parameters():
        p.requires_grad_(False)
    assert num_parameters(model) == 0
