"""2 Ray Train workers on CPU (gloo) = 1 worker on the same global batch: losses, gradients, state.

The global batch of 16 is split 8 + 8; NT-Xent must see the other worker's negatives with
gradients flowing back (gather_with_grad), BatchNorm must use the global batch
(GlobalBatchNorm), the loop averages the gradients. Several optimisation steps of the loop at the
method's own SGD learning rate, so that the EMA teachers, queues, prototypes and BN statistics move
and are compared after the last step. Then a run through train_distributed killed after its first
epoch and resumed through its Ray store, and gather_with_grad's backward under 2 gloo processes.
"""

import json
from pathlib import Path

import pytest
import torch

from lab.config import RunConfig
from lab.distributed import GradientBuckets, rank, world_size
from lab.methods import build_method
from lab.methods.base import EpochData
from lab.optim import build_optimizer
from lab.seeds import derived_seed
from lab.train import optimisation_step, prepare_for_workers
from lab.views import EvalView

GLOBAL_BATCH, STEPS = 16, 3
DATASET_SIZE = GLOBAL_BATCH * STEPS
METHODS = [dict(method="simclr", temperature=0.2), dict(method="simsiam"),
           dict(method="simsiam", simsiam_stop_gradient=False), dict(method="supcon", temperature=0.1),
           dict(method="moco", moco_queue_size=32, temperature=0.2), dict(method="moco", moco_variant="end_to_end"),
           dict(method="moco", moco_variant="memory_bank", moco_queue_size=32),
           dict(method="byol"), dict(method="barlow_twins"), dict(method="vicreg"), dict(method="rotation"),
           dict(method="rais", rais_rotation_epochs=0),
           dict(method="contrastive_clustering", cc_clusters=4, cc_cluster_temperature=0.5),
           dict(method="pcl", moco_queue_size=32, temperature=0.2),
           dict(method="swav", swav_prototypes=20, swav_queue_size=32, swav_freeze_prototypes_steps=1),
           dict(method="dino", dino_out_dim=64),
           dict(method="dino", dino_out_dim=64, dino_centering=False, dino_sharpening=False),
           dict(method="supervised"), dict(method="supervised", ba2m_blocks=2),
           dict(method="jigsaw", jigsaw_grid=2, jigsaw_permutations=24), dict(method="context_prediction"),
           dict(method="pnda", moco_queue_size=32, temperature=0.2),
           dict(method="metric", metric_loss="triplet", vat_epsilon=2.0),
           dict(method="metric", metric_loss="npair", vat_epsilon=2.0, vat_iterations=2),
           dict(method="metric", metric_loss="npair", npair_form="inner_product")]
# the same steps with the gradients averaged in buckets during backward (lab.distributed.GradientBuckets; 4 KB
# buckets: several per network), where backward issues collectives of its own too (gather_with_grad,
# GlobalBatchNorm), an EMA teacher moves, or a probe runs a backward of its own (VAT)
BUCKETED = [dict(knobs, grad_bucket_mb=2 ** -8) for knobs in (
    dict(method="simclr", temperature=0.2), dict(method="byol"),
    dict(method="metric", metric_loss="npair", vat_epsilon=2.0, vat_iterations=2))]
METHODS += BUCKETED


# EMA copies (MoCo's key encoder, BYOL's target, DINO's teacher), queues, memory bank, DINO's centre
STATE_THAT_MOVES = ("momentum.copies.", "target.copies.", "teacher.copies.", "queue.rows", "memory_bank", "center")


def run_steps(knobs: dict, workers: int) -> dict:
    """STEPS steps of the loop's optimisation_step, SGD at the method's lr, on this worker's slices, in float64:
    the split and the whole batch then sum in different orders at ~1e-16, not float32's ~1e-7, which a few
    steps of a chaotic network (max-pool ties, BatchNorm of 16 samples) amplify past any tolerance that
    would still catch a wrong gradient."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _run_steps(knobs, workers)
    finally:
        torch.set_default_dtype(default)


def _run_steps(knobs: dict, workers: int) -> dict:
    cfg = RunConfig(scale="smoke", batch_size=GLOBAL_BATCH, workers=workers, optimizer="sgd", lr_scaling="linear", **knobs)
    upstream = {"rais": {"rai_mask": torch.arange(DATASET_SIZE) % 3 == 0}}  # PNDA: as a RAIS stage would hand on
    method = prepare_for_workers(build_method(cfg, 1, dataset_size=DATASET_SIZE, upstream=upstream))
    buckets = GradientBuckets(method, cfg.grad_bucket_mb) if world_size() > 1 and cfg.grad_bucket_mb else None
    if buckets is not None:
        assert len(buckets.buckets) > 2, len(buckets.buckets)
    optimizer = build_optimizer(cfg, method)
    g = torch.Generator().manual_seed(123)
    local = slice(rank() * GLOBAL_BATCH // world_size(), (rank() + 1) * GLOBAL_BATCH // world_size())
    if knobs["method"] in ("rais", "swav", "dino"):
        method.before_epoch(0, STEPS, None)  # rais_rotation_epochs=0: the eq. (4) phase; SwAV: queue in use
    if knobs["method"] == "pcl":  # prototypes from k-means over the "dataset", identical on every worker
        images = torch.randint(0, 256, (DATASET_SIZE, 1, 28, 28), generator=torch.Generator().manual_seed(5),
                               dtype=torch.uint8)
        method.before_epoch(0, STEPS, EpochData(images, torch.zeros(DATASET_SIZE, dtype=torch.long),
                                                EvalView("fashion_mnist", 28), torch.device("cpu")))
    initial = {n: t.clone() for n, t in method.state_dict().items()}
    torch.manual_seed(derived_seed(cfg.seed, 0, offset=1))  # as the loop: the same stream on every worker
    losses = []
    for step in range(STEPS):
        views = [torch.randn(GLOBAL_BATCH, 1, 28, 28, generator=g) for _ in range(2)]
        labels = torch.randint(0, 4, (GLOBAL_BATCH,), generator=g)  # SupCon's positives span the workers
        if knobs["method"] == "metric":  # N-pair layout: [a0, p0, a1, p1, ...], one pair per class
            labels = torch.arange(GLOBAL_BATCH // 2).repeat_interleave(2)
        indexes = torch.randperm(DATASET_SIZE, generator=g)[:GLOBAL_BATCH]
        out = optimisation_step(method, optimizer, [v[local] for v in views], labels[local], step, STEPS,
                                indexes[local], buckets=buckets)
        loss = torch.tensor([out.loss.item()])
        if world_size() > 1:
            torch.distributed.all_reduce(loss)
        losses.append(loss.item() / world_size())
    return {"losses": losses, "initial": initial,
            "grads": {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None},
            # after the last step: weights, BN statistics, queues, EMA teachers -- identical on every worker
            "state": {n: t.clone() for n, t in method.state_dict().items()}}


def _worker(config: dict) -> None:
    import ray.train

    results = [run_steps(knobs, workers=2) for knobs in METHODS]
    if ray.train.get_context().get_world_rank() == 0:
        torch.save(results, config["out"])
    ray.train.report({"finished": 1})


@pytest.fixture(scope="module")
def ray_cluster():
    """The lab's own local Ray (loopback only), without token authentication so that the drivers this module
    starts attach to it with RAY_ADDRESS."""
    import os

    ray = pytest.importorskip("ray")
    from lab.ray_train import init_local_ray

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    init_local_ray(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_two_workers_equal_one_worker(ray_cluster, tmp_path: Path):
    from lab.ray_train import make_trainer

    out = tmp_path / "two_workers.pt"
    trainer = make_trainer(RunConfig(scale="smoke", batch_size=GLOBAL_BATCH, workers=2), tmp_path, "equivalence",
                           loop=_worker, loop_config={"out": str(out)})
    trainer.fit()
    two = torch.load(out)
    torch.set_num_threads(1)
    for knobs, distributed in zip(METHODS, two):
        single = run_steps(knobs, workers=1)
        # 1e-8 of each tensor's scale; VAT's finite-difference probe (xi = 1e-6) divides float64's precision by xi
        tolerance = 1e-6 if knobs.get("vat_epsilon") else 1e-8
        assert distributed["losses"] == pytest.approx(single["losses"], abs=tolerance, rel=tolerance), knobs
        assert single["grads"].keys() == distributed["grads"].keys() and single["state"].keys() == \
            distributed["state"].keys()
        # the state the step moves besides the weights: it must have moved, or comparing it proves nothing
        moving = [n for n in single["state"] if any(k in n for k in STATE_THAT_MOVES)
                  and not (n == "center" and knobs.get("dino_centering") is False)]  # no centring: c stays 0
        assert all(not torch.equal(single["state"][n], single["initial"][n]) for n in moving), knobs
        for kind in ("grads", "state"):
            for name, value in single[kind].items():
                if not value.is_floating_point():  # queue pointers, step counters, cluster assignments
                    assert torch.equal(distributed[kind][name], value), (knobs, kind, name)
                    continue
                error = (distributed[kind][name] - value).norm().item()
                assert error <= tolerance * max(1.0, value.norm().item()), (knobs, kind, name, error)
        if knobs["method"] in ("moco", "pcl", "pnda", "byol", "dino", "swav") and knobs.get("moco_variant") != \
                "end_to_end":
            assert moving, knobs  # the EMA / queue state that this test must cover is there


def _gather_step(world: int, rank: int) -> dict[str, torch.Tensor]:
    """Each worker gathers its 2 rows into the global 4 and weights them with its own matrix: the loss of
    worker w is sum(weights_w * gathered), so d(sum_w loss_w)/d(x_rank) = sum_w weights_w[rank's rows]."""
    from lab.distributed import gather_with_grad

    x = torch.arange(4.0).view(4, 1).repeat(1, 3)[2 * rank:2 * rank + 2].clone().requires_grad_()
    weights = torch.randn(4, 3, generator=torch.Generator().manual_seed(rank))
    gathered = gather_with_grad(x)
    (weights * gathered).sum().backward()
    return {"gathered": gathered.detach(), "grad": x.grad}


def test_gather_backward_sums_the_workers_gradients_and_keeps_this_workers_slice(tmp_path: Path):
    """Under 2 gloo processes: the forward is the concatenation in rank order; the backward is the sum over
    workers of their gradients at this worker's rows (a slice-only backward, lightly #1528 / #1977, would
    give this worker's own weights alone: 1/W of the gradient on average)."""
    from tests.gloo import run_on_gloo_workers

    workers = run_on_gloo_workers(_gather_step, tmp_path)
    weights = [torch.randn(4, 3, generator=torch.Generator().manual_seed(r)) for r in range(2)]
    for rank, out in enumerate(workers):
        torch.testing.assert_close(out["gathered"], torch.arange(4.0).view(4, 1).repeat(1, 3))
        torch.testing.assert_close(out["grad"], (weights[0] + weights[1])[2 * rank:2 * rank + 2])
        assert not torch.allclose(out["grad"], weights[rank][2 * rank:2 * rank + 2])


KILL_RUN = dict(method="moco", moco_queue_size=128, batch_size=32, epochs=2, workers=2, threads=1, scale="smoke",
                train_subset=192, eval_subset=128, test_subset=64, linear_epochs=2)


@pytest.mark.slow  # ~70 s, most of it TorchTrainer's start, three times: pytest -m slow
def test_a_two_worker_run_killed_after_its_first_epoch_resumes_through_its_ray_store(ray_cluster, tmp_path: Path):
    """train_distributed (TorchTrainer, 2 gloo workers): a driver (`python -m lab.train --workers 2`) killed once
    its first epoch's checkpoint is in the Ray Train storage; the same run again restores it (Train V2 restores
    from its storage), resumes after epoch 1, and ends with the uninterrupted 2-worker run's numbers."""
    import ray

    from lab.ray_train import train_distributed
    from tests.processes import kill_session, start, wait_for

    cfg = RunConfig(**KILL_RUN)
    reference = train_distributed(cfg, storage=tmp_path / "uninterrupted")
    killed = tmp_path / "killed"
    args = ["-m", "lab.train", "--out", str(killed)] + [a for k, v in KILL_RUN.items() for a in (f"--{k}", str(v))]
    first = start(args, tmp_path / "first.txt", RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    # the checkpoint is in storage once Ray Train's checkpoint manager has recorded it in its snapshot
    reached = wait_for(lambda: any("checkpoint_" in path.read_text()
                                   for path in killed.glob("*/checkpoint_manager_snapshot.json")), timeout=300)
    kill_session(first)
    assert reached and not (killed / "result.json").exists(), (tmp_path / "first.txt").read_text()[-3000:]
    resumed = train_distributed(cfg, storage=killed)
    assert resumed["resumed_from_epoch"] == 1 and reference["resumed_from_epoch"] is None
    assert reference["epochs_done"] == resumed["epochs_done"] == 2
    for key in ("knn_top1", "linear_top1", "random_knn_top1", "final_loss", "embedding_std"):
        assert reference[key] == pytest.approx(resumed[key], abs=1e-6), key
    assert [h["loss"] for h in reference["history"]] == pytest.approx([h["loss"] for h in resumed["history"]], abs=1e-6)


def _global_batchnorm_step(world: int, rank: int) -> dict[str, torch.Tensor]:
    """Each worker's half of a batch whose mean (1e3) dwarfs its std (0.1): output and input grad."""
    from lab.distributed import GlobalBatchNorm

    x = _large_mean_batch()[rank::world].clone().requires_grad_()
    bn = GlobalBatchNorm(3)
    y = bn(x)
    (y * _output_weights()[rank::world]).sum().backward()
    return {"y": y.detach(), "grad": x.grad, "running_var": bn.running_var}


def _large_mean_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 1e3 + 0.1 * torch.randn(16, 3, 2, 2, generator=g)  # float32, as the workers see it


def _output_weights() -> torch.Tensor:
    return torch.randn(16, 3, 2, 2, generator=torch.Generator().manual_seed(1))


def test_global_batchnorm_two_workers_match_float64_batchnorm_when_the_mean_dwarfs_the_std(tmp_path: Path):
    """var = E[(x - mu)^2] in two passes: the one-pass E[x^2] - mu^2 in float32 is all rounding here
    (1e6 - 1e6, float32's step there 0.06, for a variance of 1e-2), so normalised outputs would be
    off by O(1) or NaN. Reference: float64 BatchNorm of the same float32 inputs."""
    from tests.gloo import run_on_gloo_workers

    x = _large_mean_batch().double().requires_grad_()
    bn = torch.nn.BatchNorm2d(3).double()
    (bn(x) * _output_weights().double()).sum().backward()
    expected_y = torch.nn.functional.batch_norm(x.detach(), None, None, training=True)
    workers = run_on_gloo_workers(_global_batchnorm_step, tmp_path)
    for worker, out in enumerate(workers):
        torch.testing.assert_close(out["y"].double(), expected_y[worker::2], atol=1e-2, rtol=0)
        torch.testing.assert_close(out["grad"].double(), x.grad[worker::2], atol=0.2, rtol=1e-2)
        torch.testing.assert_close(out["running_var"].double(), bn.running_var, rtol=1e-2, atol=0)
