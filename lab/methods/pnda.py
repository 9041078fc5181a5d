"""PNDA: Positive-Negative Data Augmentation with RAIS (document 000, Sec. 2.2), on MoCo v2.

Each image's rotated copy is either an extra positive or an extra negative of its query:

- RP (rotation positive): the image is rotation-agnostic (RAI, found by lab.methods.rais):
  besides its key k_i, the rotated key k_i^rot is a positive;
- RN (rotation negative): the rotated key is one more negative beside the queue.

With z_i the query, P_i its positives and N_i its negatives (the queue, plus k_i^rot for RN),

    L_i = -1/|P_i| sum_{p in P_i} log( exp(z_i.z_p / tau) /
                                       ( sum_{p' in P_i} exp(z_i.z_p' / tau) + sum_{n in N_i} exp(z_i.z_n / tau) ) )   (eq. 5)

i.e. with logits s = [z.k, z.k^rot, z.queue] / tau the denominator is always the logsumexp of
the whole row and the numerator averages over the positive columns. `pnda_mode` chooses the
RP set: pnda (RAIS's), pda (every image: always positive), nda (none: always negative), none
(MoCo v2 itself: no rotated key at all). The rotation of k_i^rot is drawn per image from
{90, 180, 270} degrees by a hash of (image index, step) (lab-side choice: identical on any number of
workers and after a resume); rotated keys never enter the queue.

RAIS runs through the same loop before the first epoch (rais_rotation_epochs +
rais_separation_epochs epochs on the same training images; the scale's schedule, the
paper's code: 10 epochs on CIFAR-100), and the RP mask (one flag per training image,
indexed by the loop's dataset positions) is a buffer: saved with every checkpoint, so a
resumed run neither reruns RAIS nor changes its set.
"""

from __future__ import annotations

import base64
import io
import sys

import torch
import torch.nn.functional as F

from lab.distributed import gather
from lab.methods.base import StepOutput, checked_indexes
from lab.methods.moco import MoCo

MODES = ("none", "pda", "nda", "pnda")


def pnda_loss(q: torch.Tensor, k: torch.Tensor, k_rot: torch.Tensor, negatives: torch.Tensor,
              rotation_positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. (5), mean over the n queries.

    q, k, k_rot: (n, d) queries, keys and rotated keys; negatives: (K, d) the queue;
    rotation_positive: (n,) bool, True where k_rot is a positive (RP), else a negative (RN).
    Everything is l2-normalised here.
    """
    q, k, k_rot, negatives = (F.normalize(t, dim=1) for t in (q, k, k_rot, negatives))
    logits = torch.cat([(q * k).sum(1, keepdim=True), (q * k_rot).sum(1, keepdim=True), q @ negatives.T],
                       dim=1) / temperature
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[:, 0] = True
    positive[:, 1] = rotation_positive
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -((log_prob * positive).sum(1) / positive.sum(1)).mean()


def rotation_turns(indexes: torch.Tensor, step: int) -> torch.Tensor:
    """Quarter turns in {1, 2, 3} per image: a hash of (dataset index, step), so that every worker
    (and a resumed run) rotates an image exactly as one worker would, and each angle gets a third."""
    return 1 + (indexes.long() * 7919 + step * 104729) % 3


def rotate_by(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Image i rotated by turns[i] x 90 degrees."""
    out = x.clone()
    for k in (1, 2, 3):
        chosen = turns.to(x.device) == k
        if chosen.any():
            out[chosen] = torch.rot90(x[chosen], k, dims=(2, 3))
    return out


class PNDA(MoCo):
    name = "pnda"

    def __init__(self, cfg, backbone):  # moco_variant == "queue": validate() refuses the others
        super().__init__(cfg, backbone)
        n = cfg.memory_bank_size  # the loop sets it to the number of training images
        if n is None:
            raise ValueError("pnda needs memory_bank_size = the number of training images (lab.train.build_method "
                             "sets it) to hold one rotation-positive flag per image")
        self.register_buffer("rotation_positive", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("rais_done", torch.zeros((), dtype=torch.bool))
        self.register_buffer("rotation_step", torch.zeros((), dtype=torch.long))

    @classmethod
    def validate(cls, cfg) -> None:
        from lab.config import ConfigError

        super().validate(cfg)
        if cfg.moco_variant != "queue":
            raise ConfigError(f"method='pnda' builds on MoCo v2's queue; moco_variant={cfg.moco_variant!r} must be 'queue'")

    # --- RAIS, once, before the first epoch ---------------------------------------------------
    def before_epoch(self, epoch, steps_per_epoch, data) -> None:
        if self.cfg.pnda_mode == "pnda" and not bool(self.rais_done):
            self.rotation_positive.copy_(run_rais(self.cfg, data).to(self.rotation_positive.device))
        elif self.cfg.pnda_mode == "pda":
            self.rotation_positive.fill_(True)
        self.rais_done.fill_(True)

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        if self.cfg.pnda_mode == "none":
            return super().forward(views, labels, indexes)
        n = self.rotation_positive.shape[0]
        indexes = checked_indexes(indexes, n, self.rotation_positive.device, "pnda",
                                  f"RAIS flagged {n} training images")
        x1, x2 = views
        q = self._query(x1)
        k, k_rot = self._key(x2), self._key(rotate_by(x2, rotation_turns(indexes, int(self.rotation_step))))
        negatives = self.queue.clone().detach()
        rp = self.rotation_positive[indexes]
        loss = pnda_loss(q, k, k_rot, negatives, rp, self.cfg.temperature)
        if self.training:
            self._enqueue(gather(k))
            self.rotation_step += 1
        return StepOutput(loss, q.detach(), {"rotation_positive_in_batch": rp.float().mean().item()})

    def result_columns(self, train_images: torch.Tensor) -> dict:
        """The RP set's ratio and an image grid of RP / RN samples (stored with the run)."""
        if self.cfg.pnda_mode == "none":
            return {}
        mask = self.rotation_positive.cpu()
        return {"rai_positive_ratio": 100.0 * mask.float().mean().item(),
                "rai_samples_png": sample_grid_png(train_images, mask)}


def run_rais(cfg, data) -> torch.Tensor:
    """RAIS steps 1-3 through the one loop on the same training images: the RP mask."""
    from lab.checkpoint import MemoryStore
    from lab.train import build_method, train

    rais_cfg = cfg.replace(method="rais", epochs=cfg.rais_rotation_epochs + cfg.rais_separation_epochs,
                           base_lr=None, weight_decay=None, memory_bank_size=None, init_from=None)
    print(f"[lab] RAIS: {cfg.rais_rotation_epochs} rotation + {cfg.rais_separation_epochs} separation epochs "
          f"(lambda {cfg.rais_lambda}, m {cfg.rais_margin})", file=sys.stderr, flush=True)
    store = MemoryStore()
    train(rais_cfg, store, progress=False, device=data.device, evaluation=False)  # same training images as cfg
    rais = build_method(rais_cfg.resolved(), data.images.shape[1]).to(data.device)
    rais.load_state_dict(store.state["method"])
    return rais.rai_mask(data.images, data.eval_view, data.device)


def sample_grid_png(images_uint8: torch.Tensor, mask: torch.Tensor, per_row: int = 16) -> str:
    """Base64 PNG: up to 2 rows of RP images over 2 rows of RN images (first ones by index)."""
    from torchvision.utils import make_grid
    from PIL import Image

    rows = []
    for chosen in (mask, ~mask):
        picked = images_uint8[torch.nonzero(chosen).flatten()[: 2 * per_row]]
        pad = torch.zeros((2 * per_row - len(picked), *images_uint8.shape[1:]), dtype=torch.uint8)
        rows.append(torch.cat([picked, pad]))
    grid = make_grid(torch.cat(rows).float() / 255, nrow=per_row, padding=2, pad_value=1.0)
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
