"""Batch samplers: which dataset positions form each step's global batch.

- `random_batches(n, batch_size, generator)`: a random permutation cut into full batches (the
  loop's default; the last partial batch is dropped).
- `class_pair_batches(labels, classes_per_batch, generator)`: N-pair sampling (Sohn, NeurIPS
  2016, Sec. 3.2; document 003, Sec. 2(2), Fig. 3): each batch holds `classes_per_batch`
  *distinct* classes with exactly 2 images of each, a pair (x_a, x_p). The other pairs' images
  are every anchor's negatives (N-pair loss), or the pool a triplet's negative is drawn from.

Layout of a class-pair batch (what `lab.methods.metric_learning` expects): interleaved,

    [a_0, p_0, a_1, p_1, ..., a_{C-1}, p_{C-1}]     (anchors at even, positives at odd positions)

so that the loop's contiguous per-worker slices (rank r takes positions [r B/W, (r+1) B/W))
hold whole pairs whenever B/W is even.

How an epoch is built (deterministic given the generator):
1. per class with >= 2 images, its images in random order, cut into consecutive pairs; an odd
   image out is paired with another random image of its class (so every image is used);
2. rounds: each round takes one pair from each of the `classes_per_batch` classes with the
   most pairs left (ties broken at random), until fewer than `classes_per_batch` classes have
   pairs left (those few pairs are dropped). Taking the fullest classes first gives the most
   batches possible: R = max{R : sum_c min(P_c, R) >= C R} for P_c pairs per class and C
   classes a batch (`class_pair_steps`), so the number of steps per epoch is known before
   sampling;
3. the pairs' order inside each batch and the order of the batches are shuffled.
"""

from __future__ import annotations

import torch


def random_batches(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(n // batch_size, batch_size) LongTensor: a random permutation of range(n) in full batches."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size={batch_size!r}: needs an integer >= 1")
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} samples: not one full batch; use batch_size <= {n}")
    steps = n // batch_size
    return torch.randperm(n, generator=generator)[: steps * batch_size].view(steps, batch_size)


def _as_labels(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-d integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
    return labels.cpu().long()


def _pairs_per_class(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes with at least 2 images, and ceil(n_c / 2) pairs for each."""
    classes, counts = labels.unique(return_counts=True)
    keep = counts >= 2
    return classes[keep], (counts[keep] + 1) // 2


def _check_classes_per_batch(classes_per_batch: int, eligible: int, total: int) -> None:
    if not (isinstance(classes_per_batch, int) and classes_per_batch >= 2):
        raise ValueError(f"classes_per_batch={classes_per_batch!r}: an N-pair batch needs an integer >= 2 "
                         "(each anchor's negatives come from the other classes of the batch)")
    if classes_per_batch > eligible:
        raise ValueError(f"classes_per_batch={classes_per_batch} distinct classes per batch, but the labels have "
                         f"only {eligible} classes with at least 2 images ({total} classes in all): use "
                         f"classes_per_batch <= {eligible}, i.e. batch_size <= {2 * eligible}")


def max_rounds(pairs: torch.Tensor, per_round: int) -> int:
    """The most rounds of `per_round` distinct classes that `pairs[c]` pairs per class allow:
    max{R : sum_c min(pairs_c, R) >= per_round * R} (each class gives at most one pair a round)."""
    low, high = 0, int(pairs.sum()) // per_round
    while low < high:  # the condition holds for R = 0 and is monotone in R
        mid = (low + high + 1) // 2
        if int(pairs.clamp(max=mid).sum()) >= per_round * mid:
            low = mid
        else:
            high = mid - 1
    return low


def class_pair_steps(labels: torch.Tensor, classes_per_batch: int) -> int:
    """Number of batches `class_pair_batches` returns for these labels (independent of the generator)."""
    labels = _as_labels(labels)
    classes, pairs = _pairs_per_class(labels)
    _check_classes_per_batch(classes_per_batch, len(classes), int(labels.unique().numel()))
    return max_rounds(pairs, classes_per_batch)


def class_pair_batches(labels: torch.Tensor, classes_per_batch: int, generator: torch.Generator) -> torch.Tensor:
    """(steps, 2 * classes_per_batch) LongTensor of dataset positions, one N-pair batch a row.

    Row layout [a_0, p_0, a_1, p_1, ...]: positions 2i and 2i+1 are two different images of the
    same class, and the classes of a row are distinct. See the module docstring for the
    construction; `steps == class_pair_steps(labels, classes_per_batch)`.
    """
    labels = _as_labels(labels)
    classes, pairs = _pairs_per_class(labels)
    _check_classes_per_batch(classes_per_batch, len(classes), int(labels.unique().numel()))

    # 1. every class's images in random order, as consecutive pairs, all classes in one flat table
    table = []
    for c in classes.tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        if len(members) % 2:  # the odd one out gets a partner from the rest of its class
            partner = members[torch.randint(len(members) - 1, (1,), generator=generator)]
            members = torch.cat([members, partner])
        table.append(members.view(-1, 2))
    flat = torch.cat(table)  # (sum P_c, 2)
    first = torch.cumsum(pairs, 0) - pairs  # row of each class's first pair in `flat`

    # 2. rounds: one pair from each of the C classes with the most pairs left
    remaining, taken = pairs.clone(), torch.zeros_like(pairs)
    rows = []
    for _ in range(max_rounds(pairs, classes_per_batch)):
        # remaining + U[0, 1): the fullest classes first, ties at random (a class with none left scores < 1)
        priority = remaining.double() + torch.rand(len(remaining), generator=generator, dtype=torch.float64)
        chosen = priority.topk(classes_per_batch).indices
        if not bool((remaining[chosen] > 0).all()):  # cannot happen: fullest-first reaches max_rounds
            raise RuntimeError("class_pair_batches: ran out of classes before max_rounds")
        chosen = chosen[torch.randperm(classes_per_batch, generator=generator)]  # 3. pairs' order in the batch
        rows.append(flat[first[chosen] + taken[chosen]].flatten())
        taken[chosen] += 1
        remaining[chosen] -= 1
    if not rows:
        return torch.empty(0, 2 * classes_per_batch, dtype=torch.long)
    batches = torch.stack(rows)
    return batches[torch.randperm(len(batches), generator=generator)]  # 3. the batches' order
