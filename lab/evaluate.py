"""Evaluation protocols on frozen features: weighted kNN and a linear probe.

Both train on the train split's features and score on the held-out test split, and every
score is stored beside the score of a randomly initialised encoder on the same protocol.

kNN follows InstDisc (Wu et al. 2018) as used by solo-learn / lightly: cosine similarity,
the k nearest training features vote for their class with weight exp(s / T)
(k = 200, T = 0.1 by default).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lab.device import autocast, in_memory_format
from lab.knobs import Knob, per_scale
from lab.views import EvalView

KNOBS = (  # the evaluation protocol of every run
    Knob("knn_k", int, 200, "k of the weighted kNN classifier", low=1),
    Knob("knn_temperature", float, 0.1, "temperature T of the kNN votes exp(s / T)", low=0, low_open=True),
    Knob("linear_epochs", int, per_scale(smoke=10, cpu=30, gpu=100), "epochs of the linear probe", low=1),
)


def evaluation_inputs(images: torch.Tensor, view: EvalView, device: torch.device, batch_size: int = 512,
                      channels_last: bool = False):
    """(start, x) per batch of uint8 images: through the evaluation view, on the device, in the run's memory
    format (lab.device): what every evaluation protocol feeds the networks."""
    for start in range(0, len(images), batch_size):
        yield start, in_memory_format(view(images[start:start + batch_size].to(device, non_blocking=True)),
                                      channels_last)


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, view: EvalView, device: torch.device,
                     batch_size: int = 512, precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """The encoder's features (float32) of uint8 images through the evaluation view, in eval mode, computed as
    the run trains (precision, memory format: lab.device); the kNN and the linear probe then run in float32."""
    was_training = encoder.training
    encoder.eval()
    out = []
    for _, x in evaluation_inputs(images, view, device, batch_size, channels_last):
        with autocast(device, precision):
            out.append(encoder(x).float())
    encoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def knn_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.1,
             chunk: int = 256) -> float:
    """Top-1 accuracy (%) of the temperature-weighted cosine kNN classifier."""
    train_features = F.normalize(train_features, dim=1)
    test_features = F.normalize(test_features, dim=1)
    k = min(k, len(train_features))
    correct = 0
    for start in range(0, len(test_features), chunk):
        sim = test_features[start:start + chunk] @ train_features.T
        top_sim, top_index = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_index], weights)
        correct += (votes.argmax(1) == test_labels[start:start + chunk]).sum().item()
    return 100.0 * correct / len(test_features)


def linear_probe_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                      test_labels: torch.Tensor, num_classes: int, epochs: int = 30, batch_size: int = 512,
                      lr: float = 1e-2, weight_decay: float = 1e-5, seed: int = 0) -> float:
    """Top-1 accuracy (%) of a linear classifier on frozen, standardised features.

    Multinomial logistic regression trained with Adam and a cosine schedule on the train
    features; the standardisation statistics come from the train split only.
    """
    mean, std = train_features.mean(0), train_features.std(0).clamp(min=1e-6)
    x_train, x_test = (train_features - mean) / std, (test_features - mean) / std
    generator = torch.Generator().manual_seed(seed)
    classifier = nn.Linear(x_train.shape[1], num_classes).to(x_train.device)
    with torch.no_grad():
        bound = 1 / math.sqrt(x_train.shape[1])
        classifier.weight.copy_(torch.empty_like(classifier.weight).uniform_(-bound, bound, generator=generator))
        classifier.bias.zero_()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator).to(x_train.device)
        for start in range(0, len(x_train), batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(classifier(x_train[index]), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        predictions = classifier(x_test).argmax(1)
    return 100.0 * (predictions == test_labels).float().mean().item()


def evaluate_encoder(encoder: nn.Module, bank_images: torch.Tensor, bank_labels: torch.Tensor,
                     test_images: torch.Tensor, test_labels: torch.Tensor, view: EvalView, num_classes: int,
                     device: torch.device, knn_k: int, knn_temperature: float, linear_epochs: int | None,
                     seed: int, precision: str = "fp32", channels_last: bool = False) -> dict[str, float]:
    """kNN (and, if linear_epochs, linear-probe) top-1 on the test split."""
    train_features = extract_features(encoder, bank_images, view, device, precision=precision,
                                      channels_last=channels_last)
    test_features = extract_features(encoder, test_images, view, device, precision=precision,
                                     channels_last=channels_last)
    bank_labels, test_labels = bank_labels.to(device), test_labels.to(device)
    scores = {"knn_top1": knn_top1(train_features, bank_labels, test_features, test_labels, num_classes,
                                   knn_k, knn_temperature)}
    if linear_epochs:
        scores["linear_top1"] = linear_probe_top1(train_features, bank_labels, test_features, test_labels,
                                                  num_classes, epochs=linear_epochs, seed=seed)
    return scores
