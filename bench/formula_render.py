"""Rendering speed of the formula-driven generators (images/s), FractalDB and Perlin noise, at 28 and 64 px.

  FractalDB search : the category search alone (categories/s; the paper's 512-px, 100,000-point filling rate)
  FractalDB render : rendering the variants of categories already found (images/s)
  FractalDB total  : generate_fractaldb end to end (images/s), search included
  Perlin total     : generate_perlin end to end (images/s)

    python bench/formula_render.py [--categories 10] [--images-per-category 40] [--sizes 28 64] [--threads 1]
    python bench/formula_render.py --grids /tmp   # also saves 10 categories x 5 variants grids of each generator
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lab.data import formula

GRID_VARIANTS = (0, 4, 9, 14, 19)  # the unweighted rendering, then weighted / jittered ones under several flips


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def save_grids(folder: Path, seed: int) -> None:
    from torchvision.utils import save_image

    for name, data in (("fractal", formula.generate_fractaldb(10, 20, 64, seed=seed)),
                       ("perlin", formula.generate_perlin(10, 20, 64, seed=seed))):
        picked = data.images.view(10, 20, 1, 64, 64)[:, list(GRID_VARIANTS)].flatten(0, 1)
        path = folder / f"{name}_grid.png"
        save_image(picked.float() / 255, str(path), nrow=len(GRID_VARIANTS), padding=2, pad_value=0.5)
        print(f"saved {path} (rows: categories, columns: variants {GRID_VARIANTS})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--images-per-category", type=int, default=40)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grids", type=Path, default=None, help="folder for fractal_grid.png and perlin_grid.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_images = args.categories * args.images_per_category

    formula.generate_perlin(2, 4, 16, seed=args.seed)  # warm-up (allocator, kernels)
    ifs, search_s = timed(lambda: formula.search_fractal_categories(args.categories, seed=args.seed)[0])
    rows = [("FractalDB search", "-", f"{args.categories / search_s:.1f} categories/s", search_s)]
    for size in args.sizes:
        data, render_s = timed(lambda size=size: formula.render_fractaldb(ifs, args.images_per_category, size,
                                                                          seed=args.seed))
        assert data.images.shape == (n_images, 1, size, size)
        rows.append(("FractalDB render", size, f"{n_images / render_s:.0f} images/s", render_s))
        total, total_s = timed(lambda size=size: formula.generate_fractaldb(args.categories, args.images_per_category,
                                                                            size, seed=args.seed))
        assert torch.equal(total.images, data.images)  # the same categories and walks
        rows.append(("FractalDB total", size, f"{n_images / total_s:.0f} images/s", total_s))
        noise, perlin_s = timed(lambda size=size: formula.generate_perlin(args.categories, args.images_per_category,
                                                                          size, seed=args.seed))
        assert noise.images.shape == (n_images, 1, size, size)
        rows.append(("Perlin total", size, f"{n_images / perlin_s:.0f} images/s", perlin_s))

    print(f"\n{args.categories} categories x {args.images_per_category} images = {n_images} images, "
          f"{torch.get_num_threads()} torch thread(s), CPU")
    print(f"{'':18s} {'px':>4s} {'speed':>22s} {'seconds':>9s}")
    for name, size, speed, seconds in rows:
        print(f"{name:18s} {size!s:>4s} {speed:>22s} {seconds:9.2f}")
    print(f"(search: {len(ifs)} IFS kept at filling rate >= 0.10 on the paper's 512-px canvas)")
    if args.grids is not None:
        save_grids(args.grids, args.seed)


if __name__ == "__main__":
    main()
