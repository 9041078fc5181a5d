"""The evaluation protocol of every run, the same for every method.

On frozen features of the held-out test split: weighted kNN and a linear probe (lab.evaluate), the
method's own clusters (NMI / ACC / ARI, lab.clustering) and its own classifier where it has them,
and Recall@K of the unseen classes under class_split='half' (lab.retrieval) on every network the
method offers (Method.evaluated_networks). Each run is scored twice: on its random initialisation
(the baseline of every score) and once trained. After each epoch a cheap monitor (kNN on fixed
subsets: held-out training images if validation_images > 0, else test images; lab.splits) follows
training.
"""

from __future__ import annotations

import torch

from lab.clustering import cluster_scores
from lab.device import autocast
from lab.evaluate import evaluate_encoder, evaluation_inputs, extract_features
from lab.methods import Method
from lab.retrieval import recall_at_k
from lab.splits import RunData
from lab.views import EvalView

@torch.no_grad()
def classifier_scores(method: Method, images: torch.Tensor, labels: torch.Tensor, view: EvalView,
                      device: torch.device, batch_size: int = 512, precision: str = "fp32",
                      channels_last: bool = False) -> dict[str, float]:
    """Top-1 (%) of the method's own classifier (Method.classify) on a labelled set; {} if it has none."""
    was_training = method.training
    method.eval()
    correct, total = 0, 0
    try:
        for start, x in evaluation_inputs(images, view, device, batch_size, channels_last):
            with autocast(device, precision):
                logits = method.classify(x)
            if logits is None:
                return {}
            correct += (logits.argmax(1).cpu() == labels[start:start + batch_size]).sum().item()
            total += len(logits)
    finally:
        method.train(was_training)
    return {"classifier_top1": 100.0 * correct / max(total, 1)}


class Protocol:
    """Scores of a run's method on its data (lab.results.SCORES' names)."""

    def __init__(self, cfg, data: RunData, view: EvalView, device: torch.device, precision: str = "fp32"):
        """precision: the run's, resolved (lab.device): features are computed as the run trains."""
        self.cfg, self.data, self.view, self.device = cfg, data, view, device
        self.monitor_bank, self.monitor_queries = data.monitor_bank, data.monitor_queries
        self.compute = {"precision": precision, "channels_last": cfg.channels_last}

    def _frozen(self, method: Method, bank, test, linear_epochs: int | None) -> dict[str, float]:
        cfg = self.cfg
        return evaluate_encoder(method.encoder, bank.images, bank.labels, test.images, test.labels, self.view,
                                self.data.train.num_classes, self.device, cfg.knn_k, cfg.knn_temperature,
                                linear_epochs, cfg.seed, **self.compute)

    def monitor(self, method: Method) -> dict[str, float]:
        """kNN on the monitoring subsets (after each epoch): RunData.monitor_queries against its bank."""
        return self._frozen(method, self.monitor_bank, self.monitor_queries, None)

    def full(self, method: Method) -> dict[str, float]:
        """Every score that applies to this method and split."""
        test = self.data.test
        scores = self._frozen(method, self.data.bank, test, self.cfg.linear_epochs)
        scores.update(cluster_scores(method, test.images, test.labels, self.view, self.device, **self.compute))
        scores.update(classifier_scores(method, test.images, test.labels, self.view, self.device, **self.compute))
        if self.cfg.class_split == "half":  # zero-shot retrieval on the unseen classes (document 003)
            labels = test.labels.to(self.device)
            for prefix, net in method.evaluated_networks().items():
                features = extract_features(net, test.images, self.view, self.device, **self.compute)
                scores.update({prefix + name: value for name, value in recall_at_k(features, labels).items()})
        return scores
