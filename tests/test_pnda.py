"""RAIS (eq. 1-4 and the step-3 score) and PNDA (eq. 5) of document 000, by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from lab.config import RunConfig
from lab.errors import ConfigError
from lab.methods.moco import infonce_loss
from lab.methods.pnda import PNDA, pnda_loss, rotate_by, rotation_turns
from lab.methods.rais import (RHO, entropy_separation_loss, rais_objective, rotation_cross_entropy,
                              rotation_entropy, selective_cross_entropy)
from lab.methods import build_method

LOG4 = math.log(4)


def test_rho_is_half_log_k():
    assert RHO == pytest.approx(0.5 * math.log(4))  # 0.6931


def test_rotation_entropy_uniform_and_peaked():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(2), math.log(2), 0.0, 0.0]])
    # p = (1/3, 1/3, 1/6, 1/6): H = 2/3 log 3 + 1/3 log 6
    expected = [LOG4, 2 / 3 * math.log(3) + 1 / 3 * math.log(6)]
    torch.testing.assert_close(rotation_entropy(logits), torch.tensor(expected))


def _rows_with_entropies():
    # row 0: uniform, H = log 4 = 1.386, H - rho = +0.693 > m: hard side
    # row 1: p = (1/2, 1/2, 0, 0) (logits -inf approximated by -1e4), H = log 2 = rho: inside the margin
    # row 2: nearly one-hot, H ~ 0, H - rho = -0.693 < -m: easy side
    return torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1e4, -1e4], [1e4, 0.0, 0.0, 0.0]])


def test_entropy_separation_loss_by_hand():
    logits = _rows_with_entropies()
    # eq. (2): -|H - rho| where |H - rho| > m: rows 0 and 2 give -0.6931 each, row 1 gives 0; sum / B (B = 1)
    assert entropy_separation_loss(logits, batch_size=1, margin=0.2).item() == pytest.approx(-2 * RHO, abs=1e-4)
    # with B = 2 the same sum is halved (the 1/B of eq. 1-3, summed over the rotations)
    assert entropy_separation_loss(logits, batch_size=2, margin=0.2).item() == pytest.approx(-RHO, abs=1e-4)
    # a margin wider than every gap switches it off
    assert entropy_separation_loss(logits, batch_size=1, margin=0.7).item() == 0.0


def test_selective_cross_entropy_only_on_the_confident_side():
    logits = _rows_with_entropies()
    labels = torch.tensor([1, 0, 0])
    # only row 2 is confident (H - rho < -m); its CE for label 0 is ~0, so test label 1 instead: CE = 1e4 + log(1+...)
    assert selective_cross_entropy(logits, labels, 1, 0.2).item() == pytest.approx(0.0, abs=1e-4)
    labels = torch.tensor([1, 0, 1])
    ce_row2 = F.cross_entropy(logits[2:], labels[2:]).item()
    assert selective_cross_entropy(logits, labels, 1, 0.2).item() == pytest.approx(ce_row2)
    # eq. (4) = L~_crs + lambda L_es
    assert rais_objective(logits, labels, 1, 0.5, 0.2).item() == pytest.approx(ce_row2 - 0.5 * 2 * RHO, abs=1e-3)


def test_rotation_cross_entropy_sums_rotations_over_b():
    logits = torch.zeros(8, 4)  # B = 2 images x 4 rotations, uniform: each CE = log 4
    labels = torch.arange(4).repeat_interleave(2)
    assert rotation_cross_entropy(logits, labels, batch_size=2).item() == pytest.approx(8 * LOG4 / 2)


def test_pnda_loss_worked_example():
    # d = 2, tau = 1: q = (1, 0), k = (1, 0), k_rot = (0, 1), one negative n = (-1, 0)
    q, k, k_rot, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), \
        torch.tensor([[-1.0, 0.0]])
    # logits s = (1, 0, -1); Z = e + 1 + 1/e
    z = math.e + 1 + 1 / math.e
    rn = -math.log(math.e / z)  # k_rot a negative: only column 0 in the numerator
    rp = -0.5 * (math.log(math.e / z) + math.log(1 / z))  # k_rot a positive: mean over columns 0 and 1
    assert pnda_loss(q, k, k_rot, n, torch.tensor([False]), 1.0).item() == pytest.approx(rn)
    assert pnda_loss(q, k, k_rot, n, torch.tensor([True]), 1.0).item() == pytest.approx(rp)


def test_rotation_negative_is_infonce_with_the_rotated_key_as_one_more_negative():
    g = torch.Generator().manual_seed(0)
    q, k, k_rot = (torch.randn(6, 8, generator=g) for _ in range(3))
    queue = torch.randn(20, 8, generator=g)
    rn = torch.zeros(6, dtype=torch.bool)
    expected = torch.stack([infonce_loss(q[i:i + 1], k[i:i + 1], torch.cat([k_rot[i:i + 1], queue]), 0.2)
                            for i in range(6)]).mean()
    torch.testing.assert_close(pnda_loss(q, k, k_rot, queue, rn, 0.2), expected)


def test_pnda_loss_matches_eq5_on_random_tensors():
    g = torch.Generator().manual_seed(1)
    q, k, k_rot = (F.normalize(torch.randn(5, 4, generator=g), dim=1) for _ in range(3))
    queue = F.normalize(torch.randn(7, 4, generator=g), dim=1)
    rp = torch.tensor([True, False, True, False, False])
    tau = 0.3
    losses = []
    for i in range(5):
        positives = [k[i]] + ([k_rot[i]] if rp[i] else [])
        negatives = list(queue) + ([] if rp[i] else [k_rot[i]])
        denominator = sum(torch.exp(q[i] @ p / tau) for p in positives) + sum(torch.exp(q[i] @ n / tau) for n in negatives)
        losses.append(-sum(torch.log(torch.exp(q[i] @ p / tau) / denominator) for p in positives) / len(positives))
    torch.testing.assert_close(pnda_loss(q, k, k_rot, queue, rp, tau), torch.stack(losses).mean())


def test_rotated_keys_turn_each_image_by_a_nonzero_quarter_in_equal_shares():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(60, 1, 1, 1)
    turns = rotation_turns(torch.arange(60), step=5)
    assert sorted(torch.bincount(turns).tolist()) == [0, 20, 20, 20]
    turned = rotate_by(x, turns)
    for image, k in zip(turned, turns.tolist()):
        assert torch.equal(image, torch.rot90(x[0], k, dims=(1, 2)))
    assert not torch.equal(rotation_turns(torch.arange(60), step=6), turns)  # a new draw each step


def test_margin_must_stay_below_rho():
    with pytest.raises(ConfigError, match=r"rais_margin=0.7: needs a number in \[0, 0.693147\) \(no entropy lies "
                                          r"beyond rho \+ m or below rho - m unless m < rho"):
        RunConfig(method="pnda", rais_margin=0.7)


def _pnda(mode: str, upstream=None) -> PNDA:
    cfg = RunConfig(scale="smoke", method="pnda", pnda_mode=mode, batch_size=8, moco_queue_size=16)
    return build_method(cfg, 1, dataset_size=40, upstream=upstream)


def test_modes_share_one_code_path_and_the_mask_comes_from_the_rais_stage():
    g = torch.Generator().manual_seed(2)
    views = [torch.randn(8, 1, 28, 28, generator=g) for _ in range(2)]
    indexes = torch.arange(8)
    pda, nda = _pnda("pda"), _pnda("nda")  # pda / nda need no RAIS: every flag True / False
    assert bool(pda.rotation_positive.all()) and not bool(nda.rotation_positive.any())
    for method in (pda, nda):
        out = method(views, indexes=indexes)
        out.loss.backward()
        assert torch.isfinite(out.loss)
    assert PNDA.stages(pda.cfg) == {} and PNDA.stages(nda.cfg) == {}
    mask = torch.arange(40) % 3 == 0
    pnda = _pnda("pnda", upstream={"rais": {"rai_mask": mask}})
    assert torch.equal(pnda.rotation_positive, mask) and "rotation_positive" in pnda.state_dict()
    stage = PNDA.stages(pnda.cfg)["rais"]
    assert stage["method"] == "rais" and stage["epochs"] == pnda.cfg.rais_rotation_epochs + pnda.cfg.rais_separation_epochs
    with pytest.raises(ValueError, match="needs the RAI mask of its rais stage"):
        _pnda("pnda")  # never silently all-negative (that would be NDA under PNDA's name)


def test_mode_none_is_moco():
    torch.manual_seed(0)
    none = _pnda("none")
    assert none.result_columns(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)) == {}


class _BrightnessDecides(torch.nn.Module):
    """Uniform rotation logits for bright images (H = log 4 > rho + m), one-hot-like for dark ones (H ~ 0)."""

    def forward(self, features):
        bright = features.mean(dim=1, keepdim=True) > 0
        peaked = torch.tensor([[30.0, 0.0, 0.0, 0.0]]).expand(len(features), 4)
        return torch.where(bright, torch.zeros_like(peaked), peaked)


def test_step3_marks_images_whose_mean_rotation_entropy_exceeds_rho_plus_m():
    from lab.views import EvalView

    cfg = RunConfig(scale="smoke", method="rais")
    rais = build_method(cfg, 1)
    rais.backbone, rais.classifier = torch.nn.Flatten(), _BrightnessDecides()
    images = torch.zeros(6, 1, 28, 28, dtype=torch.uint8)
    images[[1, 4]] = 255  # bright: rotation-agnostic
    scores = rais.rotation_scores(images, EvalView("fashion_mnist", 28), torch.device("cpu"))
    torch.testing.assert_close(scores[[1, 4]], torch.full((2,), LOG4))
    assert scores[[0, 2, 3, 5]].max().item() < 1e-6
    assert rais.rai_mask(images, EvalView("fashion_mnist", 28), torch.device("cpu")).tolist() == \
        [False, True, False, False, True, False]


def test_rais_switches_from_eq1_to_eq4_after_the_rotation_epochs():
    cfg = RunConfig(scale="smoke", method="rais", rais_rotation_epochs=2, rais_lambda=0.0)
    rais = build_method(cfg, 1)
    x = [torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))]
    rais.before_epoch(1, 10, None)
    assert not rais.separating
    step1 = rais(x).loss
    rais.before_epoch(2, 10, None)
    assert rais.separating
    step2 = rais(x).loss  # lambda 0: only the selective CE, at most the full CE
    assert step2.item() <= step1.item() + 1e-6
