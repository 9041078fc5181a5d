import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from lab.config import RunConfig
from lab.errors import ConfigError
from lab.views import (BatchColorJitter, BatchGaussianBlur, BatchRandomResizedCropFlip, EvalView, TrainViews,
                       _hsv_to_rgb, _rgb_to_hsv, view_config_for)


def _batch(n=16, c=3, side=32, seed=0):
    return (torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


def test_two_views_shapes_and_per_sample_randomness():
    views = TrainViews("cifar10", 32, view_config_for(RunConfig(dataset="cifar10")))
    torch.manual_seed(0)
    v1, v2 = views(_batch())
    assert v1.shape == v2.shape == (16, 3, 32, 32) and torch.isfinite(v1).all()
    assert not torch.allclose(v1, v2)  # two independent draws
    x = _batch(2).repeat(8, 1, 1, 1)[:16]  # the same image many times: different crops per sample
    a, _ = views(x)
    assert not torch.allclose(a[0], a[2])


def test_views_are_repeatable_under_a_seed():
    views = TrainViews("fashion_mnist", 28, view_config_for(RunConfig()))
    x = _batch(8, 1, 28)
    torch.manual_seed(3)
    first = views(x)
    torch.manual_seed(3)
    second = views(x)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_full_crop_without_flip_is_identity():
    crop = BatchRandomResizedCropFlip((1.0, 1.0), (1.0, 1.0), flip_p=0.0)
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(crop(x), x, atol=1e-5, rtol=0)
    flip = BatchRandomResizedCropFlip((1.0, 1.0), (1.0, 1.0), flip_p=1.0)
    torch.testing.assert_close(flip(x), x.flip(-1), atol=1e-5, rtol=0)


def test_hsv_round_trip_and_hue_matches_torchvision():
    x = torch.rand(6, 3, 5, 5)
    torch.testing.assert_close(_hsv_to_rgb(_rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    jitter = BatchColorJitter(1.0, 0.0, 0.0, 0.0, 0.1)
    params = jitter.make_params([x])
    params["hue"] = torch.full((6,), 0.07)
    torch.testing.assert_close(jitter.transform(x, params), TF.adjust_hue(x, 0.07), atol=1e-4, rtol=0)


def test_brightness_contrast_saturation_match_torchvision():
    x = torch.rand(3, 3, 6, 6)
    jitter = BatchColorJitter(1.0, 0.4, 0.4, 0.4, 0.0)
    params = jitter.make_params([x])
    params.update(brightness=torch.full((3,), 1.3), contrast=torch.full((3,), 1.0),
                  saturation=torch.full((3,), 1.0), hue=torch.zeros(3))
    torch.testing.assert_close(jitter.transform(x, params), TF.adjust_brightness(x, 1.3), atol=1e-5, rtol=0)
    params.update(brightness=torch.ones(3), contrast=torch.full((3,), 0.6))
    torch.testing.assert_close(jitter.transform(x, params), TF.adjust_contrast(x, 0.6), atol=1e-5, rtol=0)
    params.update(contrast=torch.ones(3), saturation=torch.full((3,), 1.4))
    torch.testing.assert_close(jitter.transform(x, params), TF.adjust_saturation(x, 1.4), atol=1e-5, rtol=0)


def test_blur_matches_torchvision_per_sample_sigma():
    x = torch.rand(2, 3, 16, 16)
    blur = BatchGaussianBlur(1.0, (0.1, 2.0), kernel_size=5)
    params = {"apply": torch.tensor([True, True]), "sigma": torch.tensor([0.5, 1.5])}
    out = blur.transform(x, params)
    for i, sigma in enumerate((0.5, 1.5)):
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i], [5, 5], [sigma, sigma]), atol=1e-5, rtol=0)


def test_eval_view_normalises_with_dataset_statistics():
    x = torch.full((2, 1, 28, 28), 73, dtype=torch.uint8)
    out = EvalView("fashion_mnist", 28)(x)
    torch.testing.assert_close(out, torch.full_like(out, (73 / 255 - 0.2860) / 0.3530))


def test_multi_crop_gives_global_then_local_views():
    cfg = RunConfig(local_crops=3, local_crop_size=12, local_crop_max_scale=0.14)
    views = TrainViews("fashion_mnist", 28, view_config_for(cfg))
    out = views(torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8), 2)
    assert [tuple(v.shape) for v in out] == [(5, 1, 28, 28)] * 2 + [(5, 1, 12, 12)] * 3


def test_local_crop_larger_than_image_fails_before_compute():
    with pytest.raises(ConfigError, match="local_crop_size=40.*use local_crop_size <= 28"):
        RunConfig(local_crops=2, local_crop_size=40)
    assert RunConfig().local_crop_size == 12  # 96/224 of 28 px


# --- SimCLR Fig. 5's transforms (view_transforms) ---------------------------------------------------------------
def test_each_named_transform_does_what_it_says_on_hand_made_images():
    from lab.views import BatchCutout, BatchGaussianNoise, BatchRotate, BatchSobel

    x = torch.rand(6, 1, 8, 8)
    turns = torch.tensor([1, 2, 3, 1, 2, 3])
    rotated = BatchRotate().transform(x, {"quarter_turns": turns})
    for i, k in enumerate(turns.tolist()):
        assert torch.equal(rotated[i], torch.rot90(x[i], k, dims=(1, 2)))
    # Sobel on a vertical step edge: magnitude 4 (|[-1 0 1; -2 0 2; -1 0 1]| . step) on the two edge columns,
    # 0 elsewhere, scaled to a peak of 1
    step = torch.zeros(1, 1, 6, 6)
    step[..., 3:] = 1.0
    edges = BatchSobel().transform(step, {})
    assert torch.allclose(edges[0, 0, :, 2:4], torch.ones(6, 2)) and edges[0, 0, :, [0, 1, 4, 5]].abs().max() == 0
    # cutout: a square of half the side, at the drawn centre, zero; the rest untouched
    ones = torch.ones(1, 1, 8, 8)
    cut = BatchCutout(0.5).transform(ones, {"cy": torch.tensor([0.5]), "cx": torch.tensor([0.5])})
    assert cut[0, 0, 2:6, 2:6].abs().max() == 0 and cut.sum() == 64 - 16
    # noise: the drawn std, clamped to [0, 1]
    grey = torch.full((4, 1, 64, 64), 0.5)
    noisy = BatchGaussianNoise().transform(grey, {"sigma": torch.tensor([0.05, 0.05, 0.1, 0.1])})
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert abs(float((noisy[2:] - 0.5).std()) - 0.1) < 0.01 and abs(float((noisy[:2] - 0.5).std()) - 0.05) < 0.005


def test_view_transforms_leave_the_first_view_as_it_is_and_apply_the_pair_in_order_to_the_second():
    from lab.config import RunConfig
    from lab.errors import ConfigError
    from lab.views import NORMALIZATION, TrainViews, transform_sequences, view_config_for

    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    mean, std = NORMALIZATION["fashion_mnist"]
    plain = (x.float() / 255 - mean[0]) / std[0]
    cfg = RunConfig.from_dict(dict(method="simclr", scale="smoke", view_transforms="rotate"))
    first, second = TrainViews("fashion_mnist", 28, view_config_for(cfg))(x)
    assert torch.allclose(first, plain)
    assert all(any(torch.allclose(second[i], torch.rot90(plain[i], k, dims=(1, 2))) for k in (1, 2, 3))
               for i in range(16))
    # order matters: rotate then sobel is sobel of the rotated image
    torch.manual_seed(0)
    cfg = RunConfig.from_dict(dict(method="simclr", scale="smoke", view_transforms="rotate,sobel"))
    _, both = TrainViews("fashion_mnist", 28, view_config_for(cfg))(x)
    assert both.shape == plain.shape and not torch.allclose(both, second)
    assert len(transform_sequences()) == 1 + 7 + 42  # '' + singles + ordered pairs of two different transforms
    for bad, match in ((dict(view_transforms="crop,crop"), "unknown"),
                       (dict(view_transforms="blur,tilt"), "unknown"),
                       (dict(view_transforms="crop", method="rotation"), "two-view ablation"),
                       (dict(view_transforms="crop", local_crops=2), "two-view ablation")):
        with pytest.raises(ConfigError, match=match):
            RunConfig.from_dict({"method": "simclr", "scale": "smoke", **bad})


@pytest.mark.parametrize("knobs", [dict(dataset="cifar10"), dict(dataset="cifar10", local_crops=2),
                                   dict(view_transforms="cutout,noise"), dict(view_transforms="rotate,sobel")],
                         ids=["recipe", "multi-crop", "cutout-noise", "rotate-sobel"])
def test_a_samples_views_do_not_depend_on_how_many_workers_share_the_batch(monkeypatch, knobs):
    """Each of 2 workers, its stream seeded as every worker's is, draws the parameters of the global batch and
    keeps its rows: its half of the batch gets the views 1 worker gives those samples."""
    import lab.distributed

    cfg = RunConfig(**knobs)
    side, channels = (32, 3) if cfg.dataset == "cifar10" else (28, 1)
    views = TrainViews(cfg.dataset, side, view_config_for(cfg))
    batch = _batch(16, channels, side)
    torch.manual_seed(11)
    one = views(batch)
    for rank in (0, 1):
        monkeypatch.setattr(lab.distributed, "world_size", lambda: 2)
        monkeypatch.setattr(lab.distributed, "rank", lambda rank=rank: rank)
        torch.manual_seed(11)
        half = views(batch[rank * 8:(rank + 1) * 8])
        assert len(half) == len(one)
        for whole, own in zip(one, half):
            torch.testing.assert_close(own, whole[rank * 8:(rank + 1) * 8], rtol=0, atol=0)
