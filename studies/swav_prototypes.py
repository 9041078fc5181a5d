"""SwAV's prototypes: the number of prototypes K, with and without the queue of stored features that the codes
are computed over, at a small and a larger batch (Caron et al. 2020, Sec. 4 and Appendix).

The paper finds K of little influence as long as there are enough prototypes (3000 by default), and needs
the queue (3840 features, from epoch 15 of 800) when the batch is small (256): Sinkhorn's equal-partition
constraint over a batch smaller than K spreads too few images over too many prototypes. The grid is K x queue
x batch x seed with the scale's budget (3 epochs at cpu scale), less the cells with more prototypes than
samples for the codes (K > queue + batch), which the lab refuses; the queue starts after the first epoch
below gpu scale (a queue of an untrained network's features is what the paper's 15 epochs avoid). At cpu scale
the queue holds 1024 features, 16 batches of 64 as the paper's 3840 are 15 of 256: with 3840 a batch-64 run
scored its 3904 x K codes at about 215 images/s here and took 14 minutes, which put the study near an hour.

    python studies/swav_prototypes.py [--scale smoke|cpu|gpu] [--out results/swav_prototypes]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {
    "smoke": dict(swav_prototypes=[32, 64], swav_queue_size=[0, 512], batch_size=[64], seed=[0]),
    "cpu": dict(swav_prototypes=[64, 256, 1024], swav_queue_size=[0, 1024], batch_size=[64, 256], seed=[0]),
    "gpu": dict(swav_prototypes=[300, 1000, 3000, 10000], swav_queue_size=[0, 3840], batch_size=[128, 256],
                seed=[0, 1, 2]),
}
QUEUE_START_EPOCH = {"smoke": 0, "cpu": 1, "gpu": 15}


def plan(args) -> Plan:
    """One part per (batch, queue), with the prototypes that the codes' samples can cover: the lab refuses
    K > queue + batch (lab.methods.swav), where Sinkhorn's equal partition cannot hold, and the report lists
    those cells as not run."""
    grid, seeds = GRID[args.scale], seeds_of(args, GRID[args.scale]["seed"])
    fixed = fixed_from(args, method="swav", swav_queue_start_epoch=QUEUE_START_EPOCH[args.scale])
    parts = []
    for batch in grid["batch_size"]:
        for queue in grid["swav_queue_size"]:
            prototypes = [k for k in grid["swav_prototypes"] if k <= queue + batch]
            if prototypes:
                parts.append(Part(f"swav_batch_{batch}_queue_{queue}", dict(fixed, batch_size=batch,
                                                                             swav_queue_size=queue),
                                  dict(swav_prototypes=prototypes, seed=seeds), folder=f"batch_{batch}_queue_{queue}"))
    return Plan("swav_prototypes", parts, report="swav_prototypes",
                layout=dict(not_run=[dict(batch_size=b, swav_queue_size=q, swav_prototypes=k)
                                     for b in grid["batch_size"] for q in grid["swav_queue_size"]
                                     for k in grid["swav_prototypes"] if k > q + b],
                            not_run_reason="more prototypes than samples for the codes (K > queue + batch): Sinkhorn's "
                                           "equal partition cannot hold, and the lab refuses the run"))


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/swav_prototypes", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
