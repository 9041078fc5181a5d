"""Batched two-view augmentation of SimCLR / SimSiam on torchvision.transforms.v2.

Each transform is a `torchvision.transforms.v2.Transform` that takes a whole batch
(B x C x H x W float in [0, 1]) and draws its random parameters *per sample*
(`make_params` returns one row per image), so one call augments the batch on the
training device with a handful of tensor ops instead of B PIL round trips. This keeps
the augmentation off the critical path on 2 cores (see bench/throughput.py).

The composition follows SimCLR (Chen et al. 2020, Appendix A) as SimSiam reuses it:
random resized crop + horizontal flip, colour jitter (p = 0.8), random grayscale (p = 0.2),
Gaussian blur (sigma in [0.1, 2.0], kernel ~10 % of the side). Colour jitter applies
brightness, contrast, saturation, hue in this fixed order (torchvision shuffles the order
per call); hue and saturation and grayscale are skipped for 1-channel images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from lab import distributed as dist_utils
from lab.data import DATASETS
from lab.knobs import Knob, Rule, derived

# Per-dataset channel statistics for the final normalisation.
NORMALIZATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    # ImageNet's statistics for the ImageNet-like photo datasets
    "tiny_imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cub200": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cars196": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # measured on 100 categories x 40 images at 28 px, seed 0 (lab.data.formula)
    "fractaldb": ((0.1628,), (0.2827,)),
    "perlin": ((0.4995,), (0.1988,)),
}


# Per-dataset strengths where the config leaves them open. CIFAR: SimCLR's CIFAR recipe (colour
# strength s = 0.5, no blur, Appendix B.9). STL-10: the ImageNet recipe (s = 1.0, blur p = 0.5).
# Fashion-MNIST is grayscale, so brightness and contrast are its only photometric changes: the
# ImageNet strength and blur (stronger changes for the two left; SimCLR and SimSiam both trained
# better with them than with the CIFAR recipe at cpu scale).
AUGMENTATION = {
    "fashion_mnist": dict(jitter_strength=1.0, blur_p=0.5, crop_min_scale=0.2),
    "cifar10": dict(jitter_strength=0.5, blur_p=0.0, crop_min_scale=0.2),
    "cifar100": dict(jitter_strength=0.5, blur_p=0.0, crop_min_scale=0.2),
    "stl10": dict(jitter_strength=1.0, blur_p=0.5, crop_min_scale=0.2),
    "tiny_imagenet": dict(jitter_strength=1.0, blur_p=0.5, crop_min_scale=0.2),
    "cub200": dict(jitter_strength=1.0, blur_p=0.5, crop_min_scale=0.2),
    "cars196": dict(jitter_strength=1.0, blur_p=0.5, crop_min_scale=0.2),
    "fractaldb": dict(jitter_strength=1.0, blur_p=0.5, crop_min_scale=0.2),
    "perlin": dict(jitter_strength=1.0, blur_p=0.5, crop_min_scale=0.2),
}


def local_crop_side(image_side: int) -> int:
    """The default small-crop side: 96/224 of the image's, as multi-crop's 96-px crops of 224-px images."""
    return max(1, round(image_side * 96 / 224))


def _recipe(name: str) -> Rule:
    values = {dataset: recipe[name] for dataset, recipe in AUGMENTATION.items()}
    common = max(set(values.values()), key=list(values.values()).count)
    others = ", ".join(f"{d} {v}" for d, v in values.items() if v != common)
    text = f"per dataset: {others}, otherwise {common}" if others else f"{common} (every dataset)"
    return derived(lambda c: AUGMENTATION[c.dataset][name], text)


PROBABILITY = dict(low=0.0, high=1.0)
KNOBS = (  # the training views of every method (SimCLR Appendix A; multi-crop of SwAV / DINO)
    Knob("crop_min_scale", float, _recipe("crop_min_scale"), "lower area scale of the global views' random "
         "resized crop", low=0, high=1, low_open=True),
    Knob("jitter_strength", float, _recipe("jitter_strength"), "colour-jitter strength s: brightness / contrast / "
         "saturation 0.8 s, hue 0.2 s", low=0),
    Knob("jitter_p", float, 0.8, "probability of colour jitter", **PROBABILITY),
    Knob("grayscale_p", float, 0.2, "probability of grayscale", **PROBABILITY),
    Knob("blur_p", float, _recipe("blur_p"), "probability of Gaussian blur", **PROBABILITY),
    Knob("local_crops", int, 0, "multi-crop: small crops beside the 2 global views (SwAV Sec. 3.2, DINO Sec. 3.1)",
         low=0),
    Knob("local_crop_size", int, derived(
        lambda c: local_crop_side(global_view_side(c.dataset, c.scale, DATASETS[c.dataset].image_size)),
        "96/224 of the view's side (12 px at 28)"), "side of the small crops in pixels", low=1),
    Knob("local_crop_min_scale", float, 0.05, "lower area scale of the small crops", low=0, high=1, low_open=True),
    Knob("local_crop_max_scale", float, 0.14, "upper area scale of the small crops", low=0, high=1, low_open=True),
    Knob("view_transforms", str, "", "SimCLR Fig. 5's ablation: these transforms, in this order, on one view and "
         "none on the other ('crop', 'colour', 'crop,colour', ...; '' = the recipe above on both views)",
         choices=lambda: transform_sequences()),
)


@dataclass(frozen=True)
class ViewConfig:
    """Strengths of the two-view augmentation (per dataset and scale)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    out_size: int | None = None  # None: the input's side
    # multi-crop: small crops of local_size px from local_scale of the image, same photometric recipe
    local_crops: int = 0
    local_scale: tuple[float, float] = (0.05, 0.14)
    local_size: int = 12
    # SimCLR Fig. 5: the named transforms in order on the second view, the first left as it is (() = the recipe)
    transforms: tuple[str, ...] = ()


def global_view_side(dataset: str, scale: str, image_side: int) -> int:
    """The side of the training views: the image's, except STL-10 below gpu scale (64 px)."""
    if dataset == "stl10":
        return 64 if scale != "gpu" else 96
    return image_side


def view_config_for(cfg) -> ViewConfig:
    """The views of a RunConfig: SimCLR's recipe with the config's strengths (colour jitter
    strength s gives brightness / contrast / saturation 0.8 s and hue 0.2 s, SimCLR Appendix A).
    STL-10 is cropped to 64 px below gpu scale."""
    s = cfg.jitter_strength
    side = DATASETS[cfg.dataset].image_size
    out = global_view_side(cfg.dataset, cfg.scale, side)
    return ViewConfig(
        crop_scale=(cfg.crop_min_scale, 1.0), jitter_p=cfg.jitter_p, brightness=0.8 * s, contrast=0.8 * s,
        saturation=0.8 * s, hue=min(0.5, 0.2 * s), grayscale_p=cfg.grayscale_p, blur_p=cfg.blur_p,
        out_size=None if out == side else out, local_crops=cfg.local_crops,
        local_scale=(cfg.local_crop_min_scale, cfg.local_crop_max_scale), local_size=cfg.local_crop_size,
        transforms=tuple(t for t in cfg.view_transforms.split(",") if t))


def _global_rows(n: int) -> tuple[int, slice]:
    """(rows to draw, this worker's rows among them). Under torch.distributed every worker draws the parameters
    of the whole global batch, world x n samples, from the same stream (the loop seeds it alike on every rank)
    and keeps its own n: a sample's views are the same however many workers share the batch, and 2 workers
    train as 1 does. The draws are a few numbers per sample; one worker draws exactly what it always did."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    return n * world, slice(rank * n, (rank + 1) * n)


def _rand(n: int, device: torch.device) -> torch.Tensor:
    rows, own = _global_rows(n)
    return torch.rand(rows, device=device)[own]


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    rows, own = _global_rows(n)
    return torch.empty(rows, device=device).uniform_(low, high)[own]


def _bernoulli(n: int, p: float, device: torch.device) -> torch.Tensor:
    return _rand(n, device) < p


def _randint(low: int, high: int, n: int, device: torch.device) -> torch.Tensor:
    rows, own = _global_rows(n)
    return torch.randint(low, high, (rows,), device=device)[own]


class BatchRandomResizedCropFlip(v2.Transform):
    """Random resized crop + horizontal flip, a different box per sample, one grid_sample."""

    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float], flip_p: float,
                 out_size: int | None = None):
        super().__init__()
        self.scale, self.ratio, self.flip_p, self.out_size = scale, ratio, flip_p, out_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        x = flat_inputs[0]
        n, device = x.shape[0], x.device
        area = _uniform(n, *self.scale, device)
        log_ratio = _uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), device)
        aspect = torch.exp(log_ratio)
        # crop width/height as fractions of the side; clamped where the box would not fit
        # (torchvision resamples up to 10 times and then falls back to a central crop).
        w = torch.sqrt(area * aspect).clamp(max=1.0)
        h = torch.sqrt(area / aspect).clamp(max=1.0)
        cx = (_rand(n, device) * (1 - w) + w / 2) * 2 - 1
        cy = (_rand(n, device) * (1 - h) + h / 2) * 2 - 1
        flip = torch.where(_bernoulli(n, self.flip_p, device), -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0] = w * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        return {"theta": theta}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        n, c, height, width = inpt.shape
        side = self.out_size or height
        grid = F.affine_grid(params["theta"].to(inpt.dtype), [n, c, side, side], align_corners=False)
        return F.grid_sample(inpt, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)  # ITU-R 601-2 luma, as torchvision


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack([
        torch.stack([v, q, p, p, t, v], 1),
        torch.stack([t, v, v, q, p, p], 1),
        torch.stack([p, p, t, v, v, q], 1),
    ], 1)  # B x 3 x 6 x H x W
    index = i.unsqueeze(1).unsqueeze(2).expand(-1, 3, 1, -1, -1)
    return choices.gather(2, index).squeeze(2)


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


class BatchColorJitter(v2.Transform):
    """Colour jitter with per-sample factors, applied to a random subset (p) of the batch."""

    def __init__(self, p: float, brightness: float, contrast: float, saturation: float, hue: float):
        super().__init__()
        self.p, self.brightness, self.contrast, self.saturation, self.hue = p, brightness, contrast, saturation, hue

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        x = flat_inputs[0]
        n, device = x.shape[0], x.device
        return {
            "apply": _bernoulli(n, self.p, device),
            "brightness": _uniform(n, max(0.0, 1 - self.brightness), 1 + self.brightness, device),
            "contrast": _uniform(n, max(0.0, 1 - self.contrast), 1 + self.contrast, device),
            "saturation": _uniform(n, max(0.0, 1 - self.saturation), 1 + self.saturation, device),
            "hue": _uniform(n, -self.hue, self.hue, device),
        }

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        x = (inpt * _per_sample(params["brightness"])).clamp(0, 1)
        mean_gray = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (mean_gray + _per_sample(params["contrast"]) * (x - mean_gray)).clamp(0, 1)
        if x.shape[1] == 3:
            gray = _grayscale(x)
            x = (gray + _per_sample(params["saturation"]) * (x - gray)).clamp(0, 1)
            hsv = _rgb_to_hsv(x)
            hue = (hsv[:, :1] + _per_sample(params["hue"])) % 1.0
            x = _hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], 1)).clamp(0, 1)
        return torch.where(_per_sample(params["apply"]), x, inpt)


class BatchRandomGrayscale(v2.Transform):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        x = flat_inputs[0]
        return {"apply": _bernoulli(x.shape[0], self.p, x.device)}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        if inpt.shape[1] == 1:
            return inpt
        return torch.where(_per_sample(params["apply"]), _grayscale(inpt).expand_as(inpt), inpt)


class BatchGaussianBlur(v2.Transform):
    """Gaussian blur with a per-sample sigma, as one grouped (depthwise) separable convolution."""

    def __init__(self, p: float, sigma: tuple[float, float], kernel_size: int):
        super().__init__()
        self.p, self.sigma, self.kernel_size = p, sigma, kernel_size | 1  # odd

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        x = flat_inputs[0]
        n, device = x.shape[0], x.device
        return {"apply": _bernoulli(n, self.p, device), "sigma": _uniform(n, *self.sigma, device)}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        n, c, h, w = inpt.shape
        half = self.kernel_size // 2
        offsets = torch.arange(-half, half + 1, device=inpt.device, dtype=inpt.dtype)
        kernel = torch.exp(-0.5 * (offsets[None] / params["sigma"][:, None].to(inpt.dtype)) ** 2)
        kernel = kernel / kernel.sum(1, keepdim=True)  # n x k
        kernel = kernel.repeat_interleave(c, 0)  # (n*c) x k
        x = F.pad(inpt.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
        x = F.conv2d(x, kernel[:, None, None, :], groups=n * c)
        x = F.conv2d(x, kernel[:, None, :, None], groups=n * c)
        return torch.where(_per_sample(params["apply"]), x.reshape(n, c, h, w), inpt)


class BatchCutout(v2.Transform):
    """Cutout (DeVries & Taylor 2017): a square of `side` x the image's side set to 0, its centre uniform over the
    image (so it may be cut by the border), one per sample."""

    def __init__(self, side: float = 0.5):
        super().__init__()
        self.side = side

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        x = flat_inputs[0]
        n, device = x.shape[0], x.device
        return {"cy": _rand(n, device), "cx": _rand(n, device)}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        n, _, h, w = inpt.shape
        ys = (torch.arange(h, device=inpt.device, dtype=inpt.dtype) + 0.5) / h
        xs = (torch.arange(w, device=inpt.device, dtype=inpt.dtype) + 0.5) / w
        inside_y = (ys[None] - params["cy"][:, None].to(inpt.dtype)).abs() < self.side / 2  # n x h
        inside_x = (xs[None] - params["cx"][:, None].to(inpt.dtype)).abs() < self.side / 2  # n x w
        mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
        return inpt.masked_fill(mask, 0.0)


class BatchSobel(v2.Transform):
    """Sobel filtering: each channel's gradient magnitude sqrt(Gx^2 + Gy^2), scaled per image to [0, 1]."""

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        n, c, h, w = inpt.shape
        gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=inpt.device,
                          dtype=inpt.dtype)
        kernels = torch.stack([gx, gx.t()])[:, None]  # 2 x 1 x 3 x 3
        x = F.pad(inpt.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
        grad = F.conv2d(x, kernels)  # (n c) x 2 x h x w
        magnitude = grad.pow(2).sum(1).sqrt().reshape(n, c, h, w)
        peak = magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
        return magnitude / peak


class BatchGaussianNoise(v2.Transform):
    """Additive Gaussian noise of a per-sample std drawn from U(sigma), on [0, 1] images, clamped to [0, 1]."""

    def __init__(self, sigma: tuple[float, float] = (0.05, 0.2)):
        super().__init__()
        self.sigma = sigma

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        x = flat_inputs[0]
        return {"sigma": _uniform(x.shape[0], *self.sigma, x.device)}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        rows, own = _global_rows(inpt.shape[0])  # per pixel: the global batch's noise, this worker's rows
        noise = torch.randn((rows, *inpt.shape[1:]), dtype=inpt.dtype, device=inpt.device)[own]
        noise = noise * _per_sample(params["sigma"]).to(inpt.dtype)
        return (inpt + noise).clamp(0, 1)


class BatchRotate(v2.Transform):
    """Rotation by 90, 180 or 270 degrees, drawn per sample (SimCLR Fig. 4's 'rotate {90, 180, 270}')."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        x = flat_inputs[0]
        return {"quarter_turns": _randint(1, 4, x.shape[0], x.device)}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        turns = params["quarter_turns"]
        out = inpt
        for k in (1, 2, 3):
            out = torch.where(_per_sample(turns == k), torch.rot90(inpt, k, dims=(2, 3)), out)
        return out


class Normalize(v2.Transform):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return (inpt - self.mean.to(inpt.device)) / self.std.to(inpt.device)


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 -> [0, 1] in torch's default dtype (float32 unless a test asks for float64)."""
    return images_uint8.to(torch.get_default_dtype()).div_(255.0)


def _pipeline(dataset: str, cfg: ViewConfig, crop_scale: tuple[float, float], out: int) -> v2.Compose:
    return v2.Compose([
        BatchRandomResizedCropFlip(crop_scale, cfg.crop_ratio, cfg.flip_p, out),
        BatchColorJitter(cfg.jitter_p, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
        BatchRandomGrayscale(cfg.grayscale_p),
        BatchGaussianBlur(cfg.blur_p, cfg.blur_sigma, kernel_size=max(3, int(0.1 * out))),
        Normalize(*NORMALIZATION[dataset]),
    ])


# SimCLR Fig. 4-5's transforms, each applied to every image of the view (the ablation asks what each one does,
# not how often): crop (random resized crop + flip, the recipe's scale), cutout, colour (jitter at the recipe's
# strength, then grayscale at its p), sobel, noise, blur (the recipe's sigma), rotate.
TRANSFORMS = ("crop", "cutout", "colour", "sobel", "noise", "blur", "rotate")


def transform_sequences() -> tuple[str, ...]:
    """What view_transforms accepts: '' (the recipe), one transform, or an ordered pair of two different ones."""
    return ("", *TRANSFORMS, *(f"{a},{b}" for a in TRANSFORMS for b in TRANSFORMS if a != b))


def _named_transform(name: str, cfg: ViewConfig, out: int) -> v2.Transform | v2.Compose:
    if name == "crop":
        return BatchRandomResizedCropFlip(cfg.crop_scale, cfg.crop_ratio, cfg.flip_p, out)
    if name == "cutout":
        return BatchCutout()
    if name == "colour":
        return v2.Compose([BatchColorJitter(1.0, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
                           BatchRandomGrayscale(cfg.grayscale_p)])
    if name == "sobel":
        return BatchSobel()
    if name == "noise":
        return BatchGaussianNoise()
    if name == "blur":
        return BatchGaussianBlur(1.0, cfg.blur_sigma, kernel_size=max(3, int(0.1 * out)))
    if name == "rotate":
        return BatchRotate()
    raise ValueError(f"unknown view transform {name!r}: choose from {TRANSFORMS}")


class TrainViews:
    """x (uint8 batch) -> [global views..., local views...]: independent draws of the augmentation.

    n_views global views at the training side (two for the two-view methods, one for the
    pretext tasks), then cfg.local_crops small crops of cfg.local_size px (multi-crop, SwAV
    Sec. 3.2 / DINO Sec. 3.1): the local crops are drawn from a smaller scale range and
    resampled straight to their small side by the same crop op.

    With cfg.transforms (SimCLR Fig. 5's protocol, Sec. 3.1), the first view is the image as it is and every
    other view gets those transforms in order, each applied to every image; crop is then the only one that
    resamples, so without it the views keep the image's side (resized to the training side if it differs).
    """

    def __init__(self, dataset: str, image_size: int, cfg: ViewConfig):
        out = cfg.out_size or image_size
        self.out_size, self.local_crops = out, cfg.local_crops
        self.augment = _pipeline(dataset, cfg, cfg.crop_scale, out)
        self.augment_local = _pipeline(dataset, cfg, cfg.local_scale, cfg.local_size) if cfg.local_crops else None
        self.ablation = None
        if cfg.transforms:
            self.identity = v2.Compose([_Resize(out), Normalize(*NORMALIZATION[dataset])])
            self.ablation = v2.Compose([_Resize(out), *(_named_transform(t, cfg, out) for t in cfg.transforms),
                                        Normalize(*NORMALIZATION[dataset])])

    def __call__(self, images_uint8: torch.Tensor, n_views: int = 2) -> list[torch.Tensor]:
        x = to_float(images_uint8)
        if self.ablation is not None:
            return [self.identity(x)] + [self.ablation(x) for _ in range(n_views - 1)]
        views = [self.augment(x) for _ in range(n_views)]
        return views + [self.augment_local(x) for _ in range(self.local_crops)]


class _Resize(v2.Transform):
    """To the training side (a no-op where the image has it already)."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        if inpt.shape[-1] == self.side and inpt.shape[-2] == self.side:
            return inpt
        return F.interpolate(inpt, size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False)


class EvalView:
    """The deterministic view for feature extraction: resize (if the training views do) + normalise."""

    def __init__(self, dataset: str, out_size: int):
        self.out_size = out_size
        self.normalize = Normalize(*NORMALIZATION[dataset])

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = to_float(images_uint8)
        if x.shape[-1] != self.out_size:
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.normalize(x)
