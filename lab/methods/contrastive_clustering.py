"""Contrastive Clustering (Li, Hu, Liu, Peng, Zhou & Peng, AAAI 2021).

One backbone f, two heads on h = f(x) of two augmented views a, b of the N images of a batch:

- instance projector g_I (the configured projection head): z = g_I(h). Instance-level
  contrast = SimCLR's NT-Xent over the 2N rows with cosine similarity and temperature
  tau_I (cfg.temperature, 0.5 as in the paper and its code):

      l_i^a = -log exp(s(z_i^a, z_i^b) / tau_I) / sum_{k != i^a} exp(s(z_i^a, z_k) / tau_I)    (eq. 2)
      L_ins = 1 / (2N) sum_i (l_i^a + l_i^b)                                                    (eq. 3)

- cluster projector g_C: an MLP to M = cfg.cc_clusters outputs (the dataset's number of classes
  by default, as in the paper) followed by a softmax over clusters, Y^a = softmax(g_C(h^a)),
  an N x M matrix whose rows are soft labels and whose COLUMNS y_1 .. y_M (N-vectors) are the
  cluster representations. Cluster-level contrast: (y_i^a, y_i^b) is a positive pair, the
  other 2M - 2 columns are its negatives, cosine similarity, temperature tau_C
  (cfg.cc_cluster_temperature, 1.0):

      lc_i^a = -log exp(s(y_i^a, y_i^b) / tau_C) / sum_{k != i^a} exp(s(y_i^a, y_k) / tau_C)    (eq. 7)

  Entropy of the cluster-assignment probabilities, against putting every image in one cluster:

      P(y_i^k) = sum_t Y^k_ti / ||Y^k||_1,    H(Y) = -sum_i [P(y_i^a) log P(y_i^a) + P(y_i^b) log P(y_i^b)]  (eq. 8)
      L_clu = 1 / (2M) sum_i (lc_i^a + lc_i^b) - H(Y)                                              (eq. 9)

- L = L_ins + L_clu (eq. 10). Cluster of an image: argmax of the cluster head's softmax
  (`assign_clusters`).

Design choices and readings:

- Self term. Eq. 2 and 7 as printed sum over j = 1..N (M) of both views, which includes the
  anchor itself; the text names 2N - 2 (2M - 2) negatives and the official code
  (Yunfan-Li/Contrastive-Clustering, modules/contrastive_loss.py) masks the self-similarity.
  We exclude it (k != i), as SimCLR's NT-Xent, and reuse `lab.methods.simclr.nt_xent_loss`
  for the instance level.
- Entropy sign and constant. The paper subtracts H(Y) (maximising the entropy spreads the
  images over the clusters); H(Y) is the sum of both views' entropies. The official code adds
  log M + sum P log P per view, i.e. 2 log M - H(Y): the same gradient, shifted by the constant
  2 log M so that the term is a KL to the uniform distribution (>= 0). We implement eq. 9 as
  printed; the logged `cluster_entropy` is H per view (log M when the batch is spread evenly,
  0 when everything falls into one cluster).
- Heads. The official heads are Linear-ReLU-Linear without BatchNorm; the lab builds both
  heads with its own `mlp` (Linear-BN-ReLU, cfg.head_layers, cfg.head_hidden_dim), so that the
  projector knobs mean the same for every method. The cluster head is an MLP of cfg.head_layers
  layers for head="mlp" and one linear layer for head="linear" or head="none" (the cluster head
  cannot be the identity: it must output M values). The softmax is taken in float32.
- Global batch. The columns are N-vectors of the GLOBAL batch: each worker gathers the rows of
  Y^a and Y^b with `gather_with_grad` and computes L_clu on the gathered N x M matrices, so every
  worker holds the same L_clu. Its gradient on worker w's rows comes back through the gather's
  backward summed over the W workers, W dL_clu/dY_w; the loop's average of parameter gradients
  over workers divides the W back out, giving exactly the 1-worker gradient (as Barlow Twins'
  all-reduced cross-correlation in this lab). The instance term is the mean over this
  worker's anchors against the gathered candidates (SimCLR's). The reported loss, averaged over
  workers, is L_ins of the global batch + L_clu.
- Optimiser. The paper trains with Adam, lr 3e-4, no weight decay, batch 256 (1000 epochs,
  ResNet-34). At gpu scale the lab uses SGD; with no published SGD value we take SimCLR's
  (base lr 0.3, weight decay 1e-4): the instance level is SimCLR's loss. At smoke / cpu scale the
  lab's AdamW defaults apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.data import DATASETS
from lab.distributed import gather_with_grad
from lab.heads import mlp
from lab.knobs import Knob, derived
from lab.methods.base import TEMPERATURE, Method, StepOutput, at_least_float32, refuse_local_crops, sgd_recipe
from lab.methods.simclr import nt_xent_loss

KNOBS = (  # cc_: Contrastive Clustering's own knobs
    Knob("cc_clusters", int, derived(lambda c: DATASETS[c.dataset].num_classes, "the dataset's number of classes"),
         "M: width of the cluster head", low=2, why="the cluster-level contrast needs M >= 2 clusters"),
    Knob("cc_cluster_temperature", float, 1.0, "tau_C of the cluster-level contrast (eq. 7)", low=0, low_open=True),
)


def nt_xent_between_columns(ya: torch.Tensor, yb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the 2M anchors of eq. 7: the M columns of ya (N x M) and of yb, whole matrices
    (no gathering here), cosine similarity, positive = the same column of the other view,
    candidates = the other 2M - 1 columns."""
    m = ya.shape[1]
    columns = F.normalize(torch.cat([ya.T, yb.T], 0), dim=1)  # 2M x N
    logits = columns @ columns.T / temperature
    logits = logits.masked_fill(torch.eye(2 * m, dtype=torch.bool, device=ya.device), float("-inf"))  # k != i
    positive = torch.cat([torch.arange(m, 2 * m), torch.arange(0, m)]).to(ya.device)
    return F.cross_entropy(logits, positive)


def assignment_entropy(y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """H of one view's cluster-assignment probabilities (eq. 8): P_i = (column sum i) / ||Y||_1,
    H = -sum_i P_i log P_i, natural log; log M for an even spread, 0 for a single cluster."""
    p = y.sum(0) / y.sum()
    return -(p * torch.log(p.clamp_min(eps))).sum()


def cluster_level_loss(ya: torch.Tensor, yb: torch.Tensor, temperature: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_clu of eq. 9 on the GLOBAL batch, and its two parts.

    ya, yb: (n, M) softmax outputs of this worker's n images (views a, b). The rows are gathered
    from all workers with gradient, so every worker computes the same L_clu on the N x M
    matrices (see the module docstring for why the averaged gradient is then the 1-worker one).
    Returns (L_clu, contrast, entropy) with contrast = 1/(2M) sum_i (lc_i^a + lc_i^b) and
    entropy = H(Y) = H(Y^a) + H(Y^b); L_clu = contrast - entropy.
    """
    with torch.autocast(device_type=ya.device.type, enabled=False):
        ya, yb = gather_with_grad(at_least_float32(ya)), gather_with_grad(at_least_float32(yb))
        contrast = nt_xent_between_columns(ya, yb, temperature)
        entropy = assignment_entropy(ya) + assignment_entropy(yb)
        return contrast - entropy, contrast, entropy


def cluster_head(kind: str, in_dim: int, hidden_dim: int, clusters: int, layers: int) -> nn.Module:
    """g_C: the configured MLP to M logits (one linear layer unless head='mlp')."""
    return mlp(in_dim, hidden_dim, clusters, layers if kind == "mlp" else 1)


class ContrastiveClustering(Method):
    name = "contrastive_clustering"
    knobs = (TEMPERATURE, *KNOBS)
    # tau_I 0.5 (Sec. "Implementation details"). No published SGD recipe (the paper: Adam 3e-4, no weight
    # decay): SimCLR's, see the docstring.
    defaults = {"temperature": 0.5, **sgd_recipe(base_lr=0.3, weight_decay=1e-4)}

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        self.instance_projector, _ = self.make_projector()
        self.cluster_projector = cluster_head(cfg.head, backbone.out_dim, cfg.head_hidden_dim, cfg.cc_clusters,
                                              cfg.head_layers)

    @classmethod
    def check(cls, cfg) -> None:
        refuse_local_crops(cfg, cls.name, "contrasts two global views only")

    def cluster_probabilities(self, h: torch.Tensor) -> torch.Tensor:
        """Y = softmax over the M clusters of g_C(h), float32 (rows sum to 1)."""
        return at_least_float32(self.cluster_projector(h)).softmax(dim=1)

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        ha, hb = (self.backbone(v) for v in views[:2])
        za, zb = self.instance_projector(ha), self.instance_projector(hb)
        instance = nt_xent_loss(za, zb, self.cfg.temperature)
        cluster, contrast, entropy = cluster_level_loss(self.cluster_probabilities(ha), self.cluster_probabilities(hb),
                                                        self.cfg.cc_cluster_temperature)
        logs = {"instance_loss": instance.detach(), "cluster_contrast": contrast.detach(),
                # H per view; log M = even spread over the clusters, 0 = one cluster
                "cluster_entropy": entropy.detach().double() / 2}
        return StepOutput(instance + cluster, za.detach(), logs)

    @torch.no_grad()
    def assign_clusters(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_i of the cluster head's softmax on f(x), in eval mode (BatchNorm's running statistics)."""
        was_training = self.training
        self.eval()
        try:
            return self.cluster_probabilities(self.backbone(x)).argmax(dim=1)
        finally:
            self.train(was_training)
