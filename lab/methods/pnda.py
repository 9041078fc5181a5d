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

RAIS is a stage of the run (`stages`): the loop trains a RAIS run on the same training images
first (rais_rotation_epochs + rais_separation_epochs epochs; the scale's schedule, the paper's
code: 10 epochs on CIFAR-100), and that run's RAI mask (lab.methods.rais.RAIS.outputs, one flag
per training image, indexed by the loop's dataset positions) reaches PNDA as `upstream["rais"]`.
The mask is a buffer, saved with every checkpoint, so a resumed run neither reruns RAIS nor
changes its set.
"""

from __future__ import annotations

import base64
import io

import torch
import torch.nn.functional as F

from lab.distributed import gather
from lab.errors import ConfigError
from lab.knobs import UNSET, Knob
from lab.methods.base import StepOutput, at_least_float32, checked_indexes, require_dataset_size
from lab.methods.moco import MoCo
from lab.methods.rais import KNOBS as RAIS_KNOBS

MODES = ("none", "pda", "nda", "pnda")
PNDA_MODE = Knob("pnda_mode", str, "pnda", "rotated keys: none (MoCo v2), pda (all positive), nda (all negative), "
                 "pnda (RAIS decides per image)", choices=MODES)


def pnda_loss(q: torch.Tensor, k: torch.Tensor, k_rot: torch.Tensor, negatives: torch.Tensor,
              rotation_positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. (5), mean over the n queries.

    q, k, k_rot: (n, d) queries, keys and rotated keys; negatives: (K, d) the queue;
    rotation_positive: (n,) bool, True where k_rot is a positive (RP), else a negative (RN).
    Everything is l2-normalised here.
    """
    q, k, k_rot, negatives = (F.normalize(t, dim=1) for t in (q, k, k_rot, negatives))
    logits = at_least_float32(torch.cat([(q * k).sum(1, keepdim=True), (q * k_rot).sum(1, keepdim=True),
                                         q @ negatives.T], dim=1)) / temperature  # float32 under autocast
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
    knobs = (PNDA_MODE, *RAIS_KNOBS)
    # % of the training images RAIS marks rotation-agnostic (RP); base64 PNG, 2 rows of RP over 2 rows of RN
    result_schema = {"rai_positive_ratio": "float", "rai_samples_png": "str"}

    def __init__(self, cfg, backbone, dataset_size: int | None = None, upstream=None):
        super().__init__(cfg, backbone)  # moco_variant == "queue": check() refuses the others
        n = require_dataset_size(dataset_size, "pnda", "one rotation-positive flag")
        self.register_buffer("rotation_positive", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("rotation_step", torch.zeros((), dtype=torch.long))
        if cfg.pnda_mode == "pda":
            self.rotation_positive.fill_(True)
        elif cfg.pnda_mode == "pnda":
            mask = (upstream or {}).get("rais", {}).get("rai_mask")
            if mask is None or mask.shape != (n,):
                raise ValueError(f"pnda_mode='pnda' needs the RAI mask of its rais stage for the {n} training images "
                                 f"(upstream['rais']['rai_mask']; lab.train runs the stage), got "
                                 f"{None if mask is None else tuple(mask.shape)}")
            self.rotation_positive.copy_(mask.to(torch.bool))

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if cfg.moco_variant != "queue":
            raise ConfigError(f"method='pnda' builds on MoCo v2's queue; moco_variant={cfg.moco_variant!r} must be 'queue'")
        if cfg.pnda_mode == "pnda" and cfg.rais_rotation_epochs + cfg.rais_separation_epochs < 1:
            raise ConfigError("rais_rotation_epochs + rais_separation_epochs = 0: pnda_mode='pnda' needs a RAIS stage "
                              "of at least one epoch")

    @classmethod
    def stages(cls, cfg) -> dict[str, dict]:
        """RAIS steps 1-2 on the same training images, with RAIS's own optimiser recipe."""
        if cfg.pnda_mode != "pnda":
            return {}
        return {"rais": {"method": "rais", "epochs": cfg.rais_rotation_epochs + cfg.rais_separation_epochs,
                         "base_lr": UNSET, "weight_decay": UNSET, "init_from": UNSET}}

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        if self.cfg.pnda_mode == "none":
            return super().forward(views, labels, indexes)
        n = self.rotation_positive.shape[0]
        indexes = checked_indexes(indexes, n, self.rotation_positive.device, "pnda",
                                  f"RAIS flagged {n} training images")
        x1, x2 = views
        q = self._query(x1)
        k, k_rot = self._key(x2), self._key(rotate_by(x2, rotation_turns(indexes, int(self.rotation_step))))
        negatives = self.queue.view()
        rp = self.rotation_positive[indexes]
        loss = pnda_loss(q, k, k_rot, negatives, rp, self.cfg.temperature)
        if self.training:
            self.queue.enqueue([gather(k)])
            self.rotation_step += 1
        return StepOutput(loss, q.detach(), {"rotation_positive_in_batch": rp.float().mean()})

    def result_columns(self, train_images: torch.Tensor) -> dict:
        """The RP set's ratio and an image grid of RP / RN samples (stored with the run)."""
        if self.cfg.pnda_mode == "none":
            return {}
        mask = self.rotation_positive.cpu()
        return {"rai_positive_ratio": 100.0 * mask.float().mean().item(),
                "rai_samples_png": sample_grid_png(train_images, mask)}


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
