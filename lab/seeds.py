"""Seeds derived from a run's seed: one formula for every generator the lab seeds on its own.

Each stream of random draws that must come out the same on any number of workers and after a
resume (the data order and augmentation of an epoch, PCL's k-means, the per-step draws of the
patch tasks and of metric learning) gets its own generator, seeded from the run's seed and the
counters that tell the stream apart.
"""

from __future__ import annotations

_MODULUS = 2**63 - 1


def derived_seed(seed: int, counter: int = 0, group: int = 0, offset: int = 0) -> int:
    """(seed * 1000003 + counter * 7919 + group * 104729 + offset) mod (2^63 - 1): counter is an epoch or
    step count, group a second index (PCL's granularity), offset a fixed salt (or a step)."""
    return (int(seed) * 1_000_003 + int(counter) * 7919 + int(group) * 104_729 + int(offset)) % _MODULUS
