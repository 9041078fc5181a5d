"""Formula-driven data (lab.data.formula): FractalDB categories and Perlin-noise categories."""

import math

import pytest
import torch

from lab.data import DatasetError, ImageSet
from lab.data.formula import (chaos_game, filling_rate, generate_fractaldb, generate_perlin, hit_counts,
                              intra_category_weights, lit_fraction, map_probabilities, perlin_fade, perlin_noise,
                              pick_maps, render_fractaldb, sample_ifs, search_fractal_categories)

# A small category-search canvas with the paper's point density (100,000 points on 512 x 512 = 0.38 per
# pixel): 6,250 points on 128 x 128, so the tests search categories quickly.
SMALL = {"fill_canvas": 128, "fill_points": 6250}


def _sierpinski_like(dets_from_scales=(0.5, 0.4, 0.3), padding_maps=1):
    """Maps w_i(x) = s_i x + t_i sending [0,1]^2 into three disjoint corners, plus zero-probability padding.

    w1: s=0.5, t=(0, 0)   -> [0, .5] x [0, .5]
    w2: s=0.4, t=(.6, 0)  -> [.6, 1] x [0, .4]
    w3: s=0.3, t=(0, .7)  -> [0, .3] x [.7, 1]
    A padding map with A = 0 and t = (5, 5) has det 0, so it must never be picked.
    """
    s1, s2, s3 = dets_from_scales
    rows = [[s1, 0, 0, s1, 0.0, 0.0], [s2, 0, 0, s2, 0.6, 0.0], [s3, 0, 0, s3, 0.0, 0.7]]
    rows += [[0, 0, 0, 0, 5.0, 5.0]] * padding_maps
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------------------
# IFS sampling and map probabilities
def test_map_probabilities_are_proportional_to_abs_det_worked_example():
    # A1 = [[.5, 0], [0, .5]]      det = .25
    # A2 = [[.2, .4], [.6, -.3]]   det = .2 * -.3 - .4 * .6 = -.06 - .24 = -.30 -> |det| = .30
    # A3 = [[.1, 0], [0, .5]]      det = .05
    # sum = .60 -> p = (.25/.6, .30/.6, .05/.6) = (5/12, 1/2, 1/12)
    maps = torch.tensor([[.5, 0, 0, .5, .1, .2], [.2, .4, .6, -.3, -.5, .9], [.1, 0, 0, .5, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(map_probabilities(maps), torch.tensor([5 / 12, 1 / 2, 1 / 12], dtype=torch.float64))


def test_sampled_ifs_follow_the_paper():
    maps, probabilities = sample_ifs(2000, torch.Generator().manual_seed(0))
    used = maps.abs().sum(-1) > 0
    n_maps = used.sum(1)
    assert set(n_maps.tolist()) == set(range(2, 9))  # N in [2, 8], 8 included (the official script stops at 7)
    assert (used == (torch.arange(8)[None] < n_maps[:, None])).all()  # used maps first, zero padding after
    assert maps.abs().max() < 1
    det = (maps[..., 0] * maps[..., 3] - maps[..., 1] * maps[..., 2]).abs()
    torch.testing.assert_close(probabilities, det / det.sum(1, keepdim=True))  # independent of map_probabilities
    assert (probabilities[~used] == 0).all()


@pytest.fixture(autouse=True)
def one_thread():
    """The generators' small per-step tensors run fastest on one thread (and the lab's CPUs are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_inverse_cdf_pick_is_searchsorted():
    # C = (.25, .5, 1): u = .25 sits on a bound and belongs to map 1 (C_0 <= u < C_1), like searchsorted(right=True)
    cumulative = torch.tensor([[0.25, 0.5, 1.0]])
    u = torch.tensor([[0.0, 0.1, 0.25, 0.3, 0.5, 0.99]])
    assert pick_maps(cumulative[:, None, :-1], u).tolist() == [[0, 0, 1, 1, 2, 2]]
    g = torch.Generator().manual_seed(0)
    _, probabilities = sample_ifs(50, g)
    cumulative = probabilities.cumsum(-1).float()
    cumulative = cumulative / cumulative[:, -1:]
    u = torch.rand(50, 300, generator=g)
    u[:, :8] = cumulative[:, :8]  # ties with every bound, padding bounds (= 1) included
    u = u.clamp(max=1 - 2 ** -24)
    expected = torch.searchsorted(cumulative, u, right=True).clamp(max=7)
    assert torch.equal(pick_maps(cumulative[:, None, :-1], u), expected)


def test_chaos_game_picks_maps_with_their_probabilities():
    # dets .25, .16, .09 (sum .5) -> p = (.50, .32, .18); each map's image is its own corner of the unit square
    maps = _sierpinski_like()
    x, y = chaos_game(maps[None], map_probabilities(maps)[None], 100_000, torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and x.shape == (1, 100_000)
    in_w1 = (x <= 0.5) & (y <= 0.5)
    in_w2 = (x >= 0.6) & (y <= 0.4)
    in_w3 = (x <= 0.3) & (y >= 0.7)
    assert bool((in_w1 | in_w2 | in_w3).all())  # never the padding map's (5, 5)
    frequencies = torch.stack([in_w1.double().mean(), in_w2.double().mean(), in_w3.double().mean()])
    torch.testing.assert_close(frequencies, torch.tensor([0.50, 0.32, 0.18], dtype=torch.float64), atol=0.01, rtol=0)


def test_chaos_game_points_lie_on_the_sierpinski_attractor():
    # w_i(x) = x / 2 + t_i, t in {(0, 0), (.5, 0), (0, .5)}: the attractor is the set whose binary digits of x and
    # y are never both 1, so a point in pixel (column, row) of a 32 x 32 grid of [0,1]^2 has column & row == 0.
    maps = torch.tensor([[.5, 0, 0, .5, 0, 0], [.5, 0, 0, .5, .5, 0], [.5, 0, 0, .5, 0, .5]], dtype=torch.float64)
    x, y = chaos_game(maps[None], map_probabilities(maps)[None], 20_000, torch.Generator().manual_seed(1))
    column, row = (x * 32).floor().long(), (y * 32).floor().long()
    assert ((column & row) == 0).all()
    assert len(torch.unique(column * 32 + row)) == 3 ** 5  # and it visits all 243 cells of the 5th-level triangle


# ---------------------------------------------------------------------------------------
# Rendering and the filling rate
def test_filling_rate_of_a_hand_made_image():
    image = torch.zeros(4, 5, dtype=torch.uint8)
    image[0, 0] = 127
    image[2, 3] = 1
    image[3, 4] = 255
    assert filling_rate(image).item() == pytest.approx(3 / 20)  # 3 lit pixels of 4 x 5
    batch = torch.stack([image, torch.zeros_like(image), torch.full_like(image, 9)])
    torch.testing.assert_close(filling_rate(batch), torch.tensor([0.15, 0.0, 1.0], dtype=torch.float64))


def test_point_rendering_of_hand_placed_points():
    # x = (0, 1, .5), y = (0, 1, 1) on a 6-px canvas with pad 1: both axes span 1 and map to [1, 5]:
    #   x: 0 -> column 1, 1 -> column 5, .5 -> 1 + 2 = column 3
    #   y: 0 -> 1 -> row 6 - 1 - 1 = 4, y: 1 -> 5 -> row 0 (y grows upwards)
    x = torch.tensor([[0.0, 1.0, 0.5]])
    y = torch.tensor([[0.0, 1.0, 1.0]])
    expected = torch.zeros(1, 6, 6, dtype=torch.int64)
    expected[0, 4, 1] = expected[0, 0, 5] = expected[0, 0, 3] = 1
    assert torch.equal(hit_counts(x, y, 6, 1), expected)
    assert lit_fraction(x, y, 6, 1).item() == pytest.approx(3 / 36)
    # a repeated point is counted twice but lit once; a non-finite point is dropped
    x2 = torch.tensor([[0.0, 1.0, 0.5, 0.5, float("nan")]])
    y2 = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.3]])
    expected[0, 0, 3] = 2
    assert torch.equal(hit_counts(x2, y2, 6, 1), expected)
    assert lit_fraction(x2, y2, 6, 1).item() == pytest.approx(3 / 36)


def test_intra_category_weighting_table_is_the_official_one():
    weights = intra_category_weights()
    assert weights.shape == (25, 6)
    assert (weights[0] == 1).all()
    changed = [(int(i), round(float(r[i]), 1)) for r in weights[1:] for i in torch.nonzero(r != 1).flatten()]
    assert sorted(changed) == sorted((p, w) for p in range(6) for w in (0.8, 0.9, 1.1, 1.2))  # 24 single changes


# ---------------------------------------------------------------------------------------
# Category search
def test_category_search_keeps_only_ifs_above_the_threshold():
    ifs, rates = search_fractal_categories(4, seed=3, fill_threshold=0.12, **SMALL)
    assert len(ifs) == 4 and (rates >= 0.12).all()
    assert all(2 <= len(m) <= 8 and m.shape[1] == 6 for m in ifs)
    # an independent rendering of the kept IFS with a fresh walk passes too (allow the walk's sampling noise)
    for maps in ifs:
        x, y = chaos_game(maps[None], map_probabilities(maps)[None], SMALL["fill_points"],
                          torch.Generator().manual_seed(9))
        assert filling_rate(hit_counts(x, y, SMALL["fill_canvas"], 6)).item() >= 0.12 - 0.03


def test_category_search_that_never_passes_names_the_knobs():
    # 200 points on 32 x 32 light at most 200 / 1024 = 0.195: 0.19 is reachable in principle, never in practice
    with pytest.raises(DatasetError, match=r"5 random IFS in a row.*fill_threshold=0\.19.*lower fill_threshold.*"
                                           r"raise max_retries"):
        search_fractal_categories(2, seed=0, fill_threshold=0.19, max_retries=5, fill_canvas=32, fill_points=200)
    with pytest.raises(DatasetError, match=r"can never be reached.*lower fill_threshold below 0\.1953"):
        generate_fractaldb(2, 4, 28, seed=0, fill_threshold=0.5, fill_canvas=32, fill_points=200)


@pytest.mark.parametrize("bad, match", [
    ({"categories": 0}, "categories must be >= 1"),
    ({"images_per_category": -1}, "images_per_category must be >= 1"),
    ({"image_size": 4}, r"image_size must be in \[8, 1024\]"),
    ({"image_size": 28.0}, "image_size must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"points": 0}, "points must be >= 1"),
    ({"categories": True}, "categories must be an integer"),
    ({"fill_threshold": 1.5}, r"fill_threshold must be a fraction in \[0, 1\]"),
    ({"max_retries": 0}, "max_retries must be >= 1"),
])
def test_nonsense_arguments_are_rejected_before_any_rendering(bad, match):
    args = {"categories": 2, "images_per_category": 4, "image_size": 28, "seed": 0} | bad
    with pytest.raises(DatasetError, match=match + ".*Fix: "):
        generate_fractaldb(**args)


def test_render_rejects_malformed_categories():
    with pytest.raises(DatasetError, match=r"ifs must be a non-empty list of \(N, 6\) map tensors.*Fix: "):
        render_fractaldb([torch.zeros(9, 6)], 4)
    with pytest.raises(DatasetError, match="supersample must be in"):
        render_fractaldb([torch.rand(3, 6)], 4, supersample=0)


@pytest.mark.parametrize("bad, match", [({"categories": 0}, "categories"), ({"image_size": 2000}, "image_size"),
                                        ({"images_per_category": 0}, "images_per_category")])
def test_perlin_rejects_nonsense_arguments(bad, match):
    with pytest.raises(DatasetError, match=match + ".*Fix: "):
        generate_perlin(**({"categories": 2, "images_per_category": 4, "image_size": 28, "seed": 0} | bad))


# ---------------------------------------------------------------------------------------
# Generated sets
@pytest.fixture(scope="module")
def fractals() -> ImageSet:
    return generate_fractaldb(4, 8, 28, seed=5, **SMALL)


@pytest.fixture(scope="module")
def noise() -> ImageSet:
    return generate_perlin(4, 8, 24, seed=5)


def test_fractal_set_shapes_and_labels(fractals):
    assert (fractals.name, fractals.split, fractals.num_classes) == ("fractaldb", "train", 4)
    assert fractals.images.shape == (32, 1, 28, 28) and fractals.images.dtype == torch.uint8
    assert fractals.labels.dtype == torch.int64
    assert fractals.labels.tolist() == [c for c in range(4) for _ in range(8)]
    assert (fractals.images.flatten(1).amax(1) == 255).all()  # every image is drawn and scaled to full range


def test_perlin_set_shapes_and_labels(noise):
    assert (noise.name, noise.split, noise.num_classes) == ("perlin", "train", 4)
    assert noise.images.shape == (32, 1, 24, 24) and noise.images.dtype == torch.uint8
    assert noise.labels.tolist() == [c for c in range(4) for _ in range(8)]
    flat = noise.images.flatten(1)
    assert (flat.amin(1) == 0).all() and (flat.amax(1) == 255).all()  # min-max scaled per image


@pytest.mark.parametrize("which", ["fractals", "noise"])
def test_four_flips_of_one_rendering(which, request):
    images = request.getfixturevalue(which).images[:, 0].view(4, 8, *request.getfixturevalue(which).images.shape[-2:])
    for category in images:
        base = category[0]
        assert torch.equal(category[1], base.flip(0))  # top-bottom
        assert torch.equal(category[2], base.flip(1))  # left-right
        assert torch.equal(category[3], base.flip(0).flip(1))  # both
        assert torch.equal(category[5], category[4].flip(0))  # the next variant likewise
        assert not torch.equal(category[4], base)  # weighting / jitter: variant 1 is another image


@pytest.mark.parametrize("which", ["fractals", "noise"])
def test_categories_differ_more_than_variants(which, request):
    images = request.getfixturevalue(which).images[:, 0].double().view(4, 8, -1)
    canonical, variant = images[:, 0], images[:, 4]  # variant 4: first weighted / jittered rendering, no flip
    between = torch.cdist(canonical, canonical, p=1)
    assert (between + torch.eye(4) * 1e9).min() > 0  # no two categories render the same image
    within = (canonical - variant).abs().sum(1)
    assert within.mean() < between.sum() / (4 * 3)


def test_same_arguments_same_bytes_other_seed_other_images():
    a = generate_fractaldb(2, 5, 20, seed=11, **SMALL)
    b = generate_fractaldb(2, 5, 20, seed=11, **SMALL)
    c = generate_fractaldb(2, 5, 20, seed=12, **SMALL)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    p, q, r = (generate_perlin(3, 5, 20, seed=s) for s in (11, 11, 12))
    assert torch.equal(p.images, q.images) and not torch.equal(p.images, r.images)


def test_categories_depend_on_the_seed_only():
    # the same seed gives the same IFS categories at any image size and count
    small, larger = search_fractal_categories(2, seed=4, **SMALL)[0], search_fractal_categories(3, seed=4, **SMALL)[0]
    assert len(larger) == 3 and all(torch.equal(m, n) for m, n in zip(small, larger[:2], strict=True))
    a, b = generate_perlin(2, 4, 16, seed=4), generate_perlin(2, 8, 16, seed=4)
    assert torch.equal(a.images[:4], b.images[:4])  # category 0's first images agree


def test_point_rendering_without_supersampling_is_binary():
    data = generate_fractaldb(2, 4, 28, seed=0, supersample=1, points=2000, **SMALL)
    assert set(torch.unique(data.images).tolist()) == {0, 255}


def test_paper_canvas_search_runs():
    data = generate_fractaldb(2, 4, 28, seed=0)  # the paper's 512-px, 100,000-point filling-rate search
    assert data.images.shape == (8, 1, 28, 28)


# ---------------------------------------------------------------------------------------
# Perlin noise
def test_perlin_fade_and_noise_worked_examples():
    # fade(t) = 6t^5 - 15t^4 + 10t^3: fade(.5) = 6/32 - 15/16 + 10/8 = .1875 - .9375 + 1.25 = .5
    # fade(.25) = 6/1024 - 15/256 + 10/64 = .005859375 - .05859375 + .15625 = .103515625
    torch.testing.assert_close(perlin_fade(torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)),
                               torch.tensor([0.0, 0.103515625, 0.5, 1.0], dtype=torch.float64))
    # identity permutation: corner (i, j) hashes to (i + j) % 256; gradients g0 = (1, 0), g1 = (0, 1), g2 = (-1, 0)
    permutation = torch.arange(256)[None]
    gradients = torch.zeros(1, 256, 2, dtype=torch.float64)
    gradients[0, :3] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    # at (.5, .5): corner dots (0,0): g0.(.5,.5) = .5; (0,1): g1.(.5,-.5) = -.5; (1,0): g1.(-.5,.5) = .5;
    #   (1,1): g2.(-.5,-.5) = .5; blend along y with fade .5: low = .5 + .5(-.5 - .5) = 0, high = .5 + .5(0) = .5;
    #   along x: 0 + .5(.5 - 0) = .25
    # at (.25, 0): y-fade 0 -> low = g0.(.25, 0) = .25, high = g1.(-.75, 0) = 0; .25 + .103515625 (0 - .25)
    #   = .25 - .02587890625 = .22412109375
    # at lattice points gradient noise is 0
    coords = torch.tensor([[[0.5, 0.5], [0.25, 0.0], [3.0, 7.0], [0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(perlin_noise(coords, permutation, gradients),
                               torch.tensor([[0.25, 0.22412109375, 0.0, 0.0]], dtype=torch.float64))


def _perlin_direct(px, py, permutation, gradients):
    """Perlin (2002) gradient noise at one point, written out loop by loop."""
    i0, j0 = math.floor(px), math.floor(py)
    fx, fy = px - i0, py - j0

    def corner(i, j):
        h = permutation[(permutation[i % 256] + j) % 256]
        gx, gy = gradients[h]
        return gx * (px - i) + gy * (py - j)

    def fade(t):
        return 6 * t ** 5 - 15 * t ** 4 + 10 * t ** 3

    def lerp(a, b, t):
        return a + t * (b - a)

    return lerp(lerp(corner(i0, j0), corner(i0, j0 + 1), fade(fy)),
                lerp(corner(i0 + 1, j0), corner(i0 + 1, j0 + 1), fade(fy)), fade(fx))


def test_perlin_noise_matches_a_direct_implementation():
    g = torch.Generator().manual_seed(0)
    permutation = torch.stack([torch.randperm(256, generator=g) for _ in range(2)])
    angle = torch.rand(2, 256, generator=g, dtype=torch.float64) * 2 * math.pi
    gradients = torch.stack([angle.cos(), angle.sin()], -1)
    coords = (torch.rand(2, 50, 2, generator=g, dtype=torch.float64) - 0.3) * 600  # negative and > 256 wrap
    ours = perlin_noise(coords, permutation, gradients)
    for b in range(2):
        direct = [_perlin_direct(float(px), float(py), permutation[b].tolist(), gradients[b].tolist())
                  for px, py in coords[b]]
        torch.testing.assert_close(ours[b], torch.tensor(direct, dtype=torch.float64))
