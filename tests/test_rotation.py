"""Rotation prediction (Gidaris et al. 2018): labels, rotations and the loss by hand."""

import math
from types import SimpleNamespace

import torch

from lab.backbones import build_backbone
from lab.methods.rotation import RotationPrediction, rotate_batch, rotation_loss


def test_rotations_and_labels():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).view(2, 1, 2, 2)
    rotated, labels = rotate_batch(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # image 0 = [[0, 1], [2, 3]]; one counter-clockwise quarter turn gives [[1, 3], [0, 2]]
    assert rotated[2, 0].tolist() == [[1.0, 3.0], [0.0, 2.0]]
    assert torch.equal(rotated[4], torch.flip(x[0], dims=(1, 2)))  # 180 degrees
    assert torch.equal(rotated[0], x[0])


def test_loss_by_hand():
    # logits (2, 0, 0, 0) for the true rotation 0: -log(e^2 / (e^2 + 3)) = log(e^2 + 3) - 2
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    expected = 0.5 * (math.log(math.e ** 2 + 3) - 2) + 0.5 * math.log(4)
    assert math.isclose(rotation_loss(logits, torch.tensor([0, 3])).item(), expected, rel_tol=1e-6)


def test_method_steps_and_reports_the_unrotated_features():
    cfg = SimpleNamespace(head="mlp", head_layers=2, head_hidden_dim=16)
    method = RotationPrediction(cfg, build_backbone("convnet_tiny", 1))
    x = torch.randn(8, 1, 28, 28)
    out = method([x])
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.embedding.shape == (8, method.backbone.out_dim)
    assert abs(out.loss.item() - math.log(4)) < 0.5  # near chance before training
    assert method.classifier[-1].out_features == 4
