"""Jigsaw (Noroozi & Favaro 2016) and context prediction (Doersch et al. 2015).

The maximal-Hamming permutation set (worked by hand on 3 items, against a direct list-based
re-implementation on 4 items, against random sets on 9), tile and patch extraction on hand-made
images whose cells hold distinct constant values (so the labels can be read off the pixels), the
losses by hand and against their definition, the methods' steps, their BatchNorm statistics, their
per-step randomness (global-batch draws, resumable) and 2 gloo workers x B/2 = 1 worker x B.
"""

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lab import distributed as dist_utils
from lab.backbones import build_backbone
from lab.config import RunConfig
from lab.errors import ConfigError
from lab.methods.context_prediction import (ContextPrediction, context_prediction_loss, cut_pairs, draw_pairs)
from lab.methods.jigsaw import (Jigsaw, all_permutations, cut_puzzles, draw_puzzles, jigsaw_loss,
                                maximal_hamming_permutations, min_pairwise_hamming)
from lab.methods.patches import (NEIGHBOURS, StepRandomness, context_geometry, extract_patches, jigsaw_geometry,
                                 to_backbone_side)
from tests.gloo import run_on_gloo_workers


def config(**knobs) -> SimpleNamespace:
    fields = dict(seed=0, head="mlp", head_layers=2, head_hidden_dim=16, jigsaw_grid=3, jigsaw_permutations=10)
    return SimpleNamespace(**{**fields, **knobs})


def build(cls, **knobs):
    torch.manual_seed(0)
    return cls(config(**knobs), build_backbone("convnet_tiny", 1))


# ------------------------------------------------------------------------- the permutation set

def test_all_permutations_lexicographic_and_complete():
    perms = all_permutations(4)
    assert perms.tolist() == [list(p) for p in itertools.permutations(range(4))]
    nine = all_permutations(9)
    assert nine.shape == (math.factorial(9), 9)
    assert len(np.unique(nine, axis=0)) == math.factorial(9)
    assert (np.sort(nine, axis=1) == np.arange(9)).all()


def test_maximal_hamming_worked_example_on_three_items():
    # Candidates 012 021 102 120 201 210; start from 012. Distances to 012: 021 2, 102 2, 120 3, 201 3,
    # 210 2 -> 120 (first of the two at 3). Distances to 120: 021 2, 102 2, 201 3, 210 2; minima over
    # {012, 120}: 021 2, 102 2, 201 3, 210 2 -> 201. The three cyclic shifts are pairwise at 3. Then
    # 021, 102, 210 are each at 2 from all three (minimum 2, sum 6): the tie goes to the first, 021.
    perms = maximal_hamming_permutations(4, 3, first=0)
    assert perms.tolist() == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1]]
    assert min_pairwise_hamming(perms[:3]) == 3 and min_pairwise_hamming(perms) == 2


def _direct_greedy(count: int, n: int, first: int) -> list[tuple[int, ...]]:
    """The greedy max-min (ties: summed distance, then lexicographic order) with lists and loops."""
    candidates = list(itertools.permutations(range(n)))
    chosen = [candidates[first]]
    while len(chosen) < count:
        best, best_key = None, None
        for c in candidates:
            if c in chosen:
                continue
            distances = [sum(a != b for a, b in zip(c, s)) for s in chosen]
            key = (min(distances), sum(distances))
            if best_key is None or key > best_key:
                best, best_key = c, key
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("count,first", [(6, 0), (12, 17), (24, 5)])
def test_maximal_hamming_matches_a_direct_implementation(count, first):
    assert [tuple(p) for p in maximal_hamming_permutations(count, 4, first=first)] == _direct_greedy(count, 4, first)


def test_maximal_hamming_set_size_determinism_and_distance():
    perms = maximal_hamming_permutations(100, 9, seed=0)
    assert perms.shape == (100, 9)
    assert (np.sort(perms, axis=1) == np.arange(9)).all()  # every row a permutation of the 9 tiles
    assert len(np.unique(perms, axis=0)) == 100
    assert np.array_equal(perms, maximal_hamming_permutations(100, 9, seed=0))
    assert not np.array_equal(perms, maximal_hamming_permutations(100, 9, seed=1))  # another start
    # random sets of 100 of the 9! permutations hold pairs 2 or 3 apart; the greedy set none below 6
    everything = all_permutations(9)
    rng = np.random.default_rng(0)
    random_minima = [min_pairwise_hamming(everything[rng.choice(len(everything), 100, replace=False)])
                     for _ in range(20)]
    assert min_pairwise_hamming(perms) >= max(random_minima)
    assert min_pairwise_hamming(perms) >= 6
    # the average stays the paper's (Table 3: 8.08 for its 100-permutation set; random pairs: 8)
    d = (perms[:, None] != perms[None]).sum(axis=2)
    assert d[np.triu_indices(100, 1)].mean() >= 8.0


def test_maximal_hamming_samples_a_pool_beyond_nine_tiles():
    perms = maximal_hamming_permutations(20, 16, seed=0)
    assert perms.shape == (20, 16) and (np.sort(perms, axis=1) == np.arange(16)).all()
    assert min_pairwise_hamming(perms) >= 14


# ------------------------------------------------------------------------------ tile extraction

def test_extract_patches_by_hand():
    x = torch.arange(16.0).view(1, 1, 4, 4)  # rows [0 1 2 3], [4 5 6 7], [8 9 10 11], [12 13 14 15]
    patches = extract_patches(x, torch.tensor([[0, 2]]), torch.tensor([[1, 0]]), 2)
    assert patches.shape == (1, 2, 1, 2, 2)
    assert patches[0, 0, 0].tolist() == [[1, 2], [5, 6]]
    assert patches[0, 1, 0].tolist() == [[8, 9], [12, 13]]
    with pytest.raises(ValueError):
        extract_patches(x, torch.tensor([[3]]), torch.tensor([[0]]), 2)


def test_cells_reassemble_the_image_for_the_identity_permutation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 27, 27, generator=g)
    cell = 9
    corners = torch.arange(9)
    top, left = ((corners // 3) * cell).repeat(2, 1), ((corners % 3) * cell).repeat(2, 1)
    identity = torch.arange(9)[None]
    tiles = cut_puzzles(x, identity, torch.zeros(2, dtype=torch.long), top, left, cell)  # tiles = cells
    # B x (3 rows x 3 cols) x C x 9 x 9 -> B x C x 27 x 27
    assembled = tiles.view(2, 3, 3, 3, cell, cell).permute(0, 3, 1, 4, 2, 5).reshape(2, 3, 27, 27)
    assert torch.equal(assembled, x)


def test_unjittered_tiles_put_back_reproduce_the_image_where_they_lie():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 28, 28, generator=g)
    labels, top, left = draw_puzzles(StepRandomness(0, 0, 3), 10, 28, 3, jitter=False)
    geo = jigsaw_geometry(28, 3)
    tiles = cut_puzzles(x, torch.arange(9)[None], torch.zeros(3, dtype=torch.long), top, left, geo.tile)
    canvas, covered = torch.zeros_like(x), torch.zeros_like(x, dtype=torch.bool)
    for b in range(3):
        for t in range(9):
            rows = slice(int(top[b, t]), int(top[b, t]) + geo.tile)
            cols = slice(int(left[b, t]), int(left[b, t]) + geo.tile)
            canvas[b, :, rows, cols] = tiles[b, t]
            covered[b, :, rows, cols] = True
    assert torch.equal(canvas[covered], x[covered])
    # centred 7-px tiles in 9-px cells from offset 0: a 1-px frame per cell, 9 x 49 pixels covered
    assert covered[0].sum() == 9 * 49 and top[0].tolist() == [1, 1, 1, 10, 10, 10, 19, 19, 19]


def cell_image(side: int, cell: int, n: int = 4) -> torch.Tensor:
    """n images whose pixel (i, j) holds 3 * (i // cell) + (j // cell) (the cell's row-major index)."""
    i = torch.arange(side)
    values = 3 * (i[:, None] // cell) + (i[None, :] // cell)
    return values.float().expand(n, 1, side, side).clone()


def test_jigsaw_labels_on_images_of_constant_cells():
    # 27-px images: 9-px cells with no slack, so every 7-px tile, wherever it is jittered in its cell,
    # is constant and equal to its cell's index. Position t must show cell permutations[label][t].
    model = build(Jigsaw, jigsaw_permutations=10)
    x = cell_image(27, 9, n=64)
    for _ in range(3):
        labels, top, left = model.draw(x)
        tiles = cut_puzzles(x, model.permutations, labels, top, left, 7)
        values = tiles.flatten(2)
        assert (values == values[..., :1]).all()  # each tile inside one cell: the gap did its job
        assert torch.equal(values[..., 0].long(), model.permutations[labels])
    assert len(set(labels.tolist())) > 5  # every image its own permutation


def test_jigsaw_tiles_stay_in_their_cells_at_28_px():
    # 28 px: 9-px cells from offset 0 or 1; a tile's centre pixel (top + 3) is always in its cell.
    x = cell_image(28, 9, n=256)
    x[:, :, 27, :] = -1
    x[:, :, :, 27] = -1
    perms = torch.from_numpy(maximal_hamming_permutations(10, 9))
    labels, top, left = draw_puzzles(StepRandomness(3, 0, 256), 10, 28, 3)
    tiles = cut_puzzles(x, perms, labels, top, left, 7)
    assert torch.equal(tiles[:, :, 0, 3, 3].long(), perms[labels])
    assert top.min() >= 0 and top.max() + 7 <= 28 and left.max() + 7 <= 28


def test_context_positions_on_images_of_constant_cells():
    # 28 px: 6-px patches 9 px apart, offset 0..2, jitter +-1: a patch's centre pixel (corner + 3) is in
    # the 9-px band of its grid cell, so it reads the cell's index: 4 for the centre, and for labels
    # 0..7 the cells 0 1 2 3 5 6 7 8 (row-major, centre skipped, Doersch et al. Fig. 2).
    x = cell_image(28, 9, n=512)
    geo = context_geometry(28)
    assert (geo.patch, geo.gap, geo.jitter, geo.slack) == (6, 3, 1, 2)
    labels, top, left = draw_pairs(StepRandomness(0, 0, 512), 28)
    pairs = cut_pairs(x, top, left, geo.patch)
    centre_value, neighbour_value = pairs[:, 0, 0, 3, 3].long(), pairs[:, 1, 0, 3, 3].long()
    assert (centre_value == 4).all()
    assert torch.equal(neighbour_value, torch.tensor([0, 1, 2, 3, 5, 6, 7, 8])[labels])
    assert torch.bincount(labels, minlength=8).min() > 30  # each image its own neighbour, all 8 drawn
    # the gap survives the jitter: along the axis where the two patches differ, >= 1 px between them
    rows, cols = NEIGHBOURS[labels, 0], NEIGHBOURS[labels, 1]
    apart_rows = (top[:, 1] - top[:, 0]).abs() - geo.patch
    apart_cols = (left[:, 1] - left[:, 0]).abs() - geo.patch
    assert (apart_rows[rows != 1] >= 1).all() and (apart_cols[cols != 1] >= 1).all()
    assert (apart_rows[rows != 1] <= 5).all()


def test_patches_are_upsampled_twice():
    assert to_backbone_side(torch.zeros(5, 1, 7, 7)).shape == (5, 1, 14, 14)


# ------------------------------------------------------------------------------------ the losses

def test_jigsaw_loss_by_hand():
    # logits (ln 3, 0, 0), label 0: -log(3 / (3 + 1 + 1)) = log(5/3); logits (0, 0, 0): log 3
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    expected = 0.5 * math.log(5 / 3) + 0.5 * math.log(3)
    assert jigsaw_loss(logits, torch.tensor([0, 2])).item() == pytest.approx(expected, rel=1e-6)


def test_context_prediction_loss_by_hand():
    # 8 logits, 2 on the true position 5 and 0 elsewhere: log(e^2 + 7) - 2
    logits = torch.zeros(1, 8)
    logits[0, 5] = 2.0
    expected = math.log(math.e ** 2 + 7) - 2
    assert context_prediction_loss(logits, torch.tensor([5])).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("loss_fn,classes", [(jigsaw_loss, 100), (context_prediction_loss, 8)])
def test_losses_match_the_definition_on_random_tensors(loss_fn, classes):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, classes, generator=g) * 3
    labels = torch.randint(0, classes, (6,), generator=g)
    direct = 0.0
    for b in range(6):  # -log( exp(l_y) / sum_k exp(l_k) )
        direct += -math.log(math.exp(logits[b, labels[b]]) / sum(math.exp(v) for v in logits[b].tolist()))
    assert loss_fn(logits, labels).item() == pytest.approx(direct / 6, rel=1e-5)


# ----------------------------------------------------------------------------------- the methods

@pytest.mark.parametrize("cls,classes", [(Jigsaw, 10), (ContextPrediction, 8)])
def test_method_steps_and_keeps_whole_image_bn_statistics(cls, classes):
    model = build(cls)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    reference = build_backbone("convnet_tiny", 1)
    reference.load_state_dict(model.backbone.state_dict())
    reference.train()(x)  # what one train-mode pass of the whole images does to the running statistics
    out = model([x])
    out.loss.backward()
    assert torch.isfinite(out.loss) and abs(out.loss.item() - math.log(classes)) < 0.7  # near chance at init
    assert out.embedding.shape == (8, model.backbone.out_dim) and not out.embedding.requires_grad
    assert model.classifier[-1].out_features == classes
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert int(model.step) == 1
    for name, value in reference.state_dict().items():
        if value.is_floating_point():  # the tiles / patches moved no running statistic
            torch.testing.assert_close(model.backbone.state_dict()[name], value)


def test_convnet_small_takes_the_upsampled_tiles():
    torch.manual_seed(0)
    model = Jigsaw(config(), build_backbone("convnet_small", 1))
    out = model([torch.randn(4, 1, 28, 28)])
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("cls", [Jigsaw, ContextPrediction])
def test_draws_resume_from_the_step_counter(cls):
    x = torch.zeros(16, 1, 28, 28)
    a = build(cls)
    first = a.draw(x)
    state = {k: v.clone() for k, v in a.state_dict().items()}
    second = a.draw(x)
    b = build(cls)
    b.load_state_dict(state)
    for u, v in zip(second, b.draw(x)):
        assert torch.equal(u, v)
    assert not torch.equal(first[1], second[1])


def test_draws_are_the_global_batchs_rows(monkeypatch):
    """Worker r of 2 with 4 images draws rows 4r..4r+3 of what 1 worker with 8 images draws."""
    single = draw_pairs(StepRandomness(5, 3, 8), 28)
    monkeypatch.setattr(dist_utils, "world_size", lambda: 2)
    for r in range(2):
        monkeypatch.setattr(dist_utils, "rank", lambda r=r: r)
        local = draw_pairs(StepRandomness(5, 3, 4), 28)
        for u, v in zip(local, single):
            assert torch.equal(u, v[4 * r:4 * r + 4])


def test_validate_reports_the_fix():
    RunConfig(method="jigsaw", scale="smoke")
    RunConfig(method="context_prediction", scale="smoke")
    RunConfig(method="jigsaw", scale="smoke", jigsaw_grid=2, jigsaw_permutations=24)
    with pytest.raises(ConfigError, match="jigsaw_permutations <= 24"):
        RunConfig(method="jigsaw", scale="smoke", jigsaw_grid=2, jigsaw_permutations=25)
    with pytest.raises(ConfigError, match=">= 2"):
        RunConfig(method="jigsaw", scale="smoke", jigsaw_permutations=1)
    with pytest.raises(ConfigError, match=r"jigsaw_grid=1: needs an integer >= 2 \(a puzzle needs at least 2 x 2"):
        RunConfig(method="jigsaw", scale="smoke", jigsaw_grid=1)
    with pytest.raises(ConfigError, match="jigsaw_grid <= 5"):  # 28 px / 6 = 4-px cells, 3-px tiles
        RunConfig(method="jigsaw", scale="smoke", jigsaw_grid=6, jigsaw_permutations=10)
    for method in ("jigsaw", "context_prediction"):
        with pytest.raises(ConfigError, match="local_crops=0"):
            RunConfig(method=method, scale="smoke", local_crops=2)


# ------------------------------------------------------------- 2 gloo workers x B/2 = 1 worker x B

def _one_step(world: int, worker: int) -> dict:
    from lab.distributed import convert_to_global_batchnorm

    views = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    local = slice(worker * 8 // world, (worker + 1) * 8 // world)
    out = {}
    for cls in (Jigsaw, ContextPrediction):
        model = build(cls)
        if world > 1:
            model = convert_to_global_batchnorm(model)
        result = model([views[local]])
        result.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        if world > 1:  # what the loop does after backward: the gradient averaged over workers
            for g in grads.values():
                torch.distributed.all_reduce(g)
                g /= world
        out[cls.name] = (result.loss.detach(), grads,
                         {n: t.clone() for n, t in model.state_dict().items() if t.is_floating_point()})
    return out


def test_two_gloo_workers_equal_one_worker(tmp_path):
    workers = run_on_gloo_workers(_one_step, tmp_path)
    single = _one_step(1, 0)
    for name, (loss, grads, state) in single.items():
        torch.testing.assert_close((workers[0][name][0] + workers[1][name][0]) / 2, loss, atol=1e-5, rtol=1e-4)
        for w in workers:
            for key, value in grads.items():
                torch.testing.assert_close(w[name][1][key], value, atol=1e-5, rtol=1e-4, msg=f"{name} {key}")
            for key, value in state.items():  # BN running statistics of whole images over the global batch
                torch.testing.assert_close(w[name][2][key], value, atol=1e-5, rtol=1e-4, msg=f"{name} {key}")
