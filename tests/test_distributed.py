"""2 Ray Train workers on CPU (gloo) = 1 worker on the same global batch: loss, gradients, state.

The global batch of 16 is split 8 + 8; NT-Xent must see the other worker's negatives with
gradients flowing back (gather_with_grad), BatchNorm must use the global batch
(GlobalBatchNorm), DDP averages the gradients. One real optimisation step of the loop.
"""

from pathlib import Path

import pytest
import torch

from lab.views import EvalView
from lab.config import RunConfig
from lab.distributed import rank, world_size
from lab.methods.base import EpochData
from lab.train import build_method, build_optimizer, optimisation_step, prepare_for_workers

GLOBAL_BATCH = 16
METHODS = [dict(method="simclr", temperature=0.2), dict(method="simsiam"),
           dict(method="simsiam", stop_gradient=False), dict(method="supcon", temperature=0.1),
           dict(method="moco", queue_size=32, temperature=0.2), dict(method="moco", moco_variant="end_to_end"),
           dict(method="byol"), dict(method="barlow_twins"), dict(method="vicreg"), dict(method="rotation"),
           dict(method="rais", rais_rotation_epochs=0),
           dict(method="contrastive_clustering", clusters=4, cluster_temperature=0.5),
           dict(method="pcl", queue_size=32, temperature=0.2),
           dict(method="swav", prototypes=20, swav_queue_size=64, local_crops=0, freeze_prototypes_steps=0),
           dict(method="dino", local_crops=0, dino_out_dim=64),
           dict(method="dino", local_crops=0, dino_out_dim=64, centering=False, sharpening=False),
           dict(method="supervised"), dict(method="supervised", ba2m_blocks=2),
           dict(method="jigsaw", jigsaw_grid=2, jigsaw_permutations=24), dict(method="context_prediction"), dict(method="pnda", queue_size=32, temperature=0.2),
           dict(method="metric", metric_loss="triplet", vat_epsilon=2.0),
           dict(method="metric", metric_loss="npair", vat_epsilon=2.0, vat_iterations=2),
           dict(method="metric", metric_loss="npair", npair_form="inner_product")]


def one_step(knobs: dict, workers: int) -> dict:
    cfg = RunConfig(scale="smoke", batch_size=GLOBAL_BATCH, workers=workers, base_lr=1e-12, **knobs).resolved()
    method = prepare_for_workers(build_method(cfg, 1, train_size=GLOBAL_BATCH))
    optimizer = build_optimizer(cfg, method)
    g = torch.Generator().manual_seed(123)
    views = [torch.randn(GLOBAL_BATCH, 1, 28, 28, generator=g) for _ in range(2)]
    labels = torch.randint(0, 4, (GLOBAL_BATCH,), generator=g)  # SupCon's positives span the workers
    if knobs["method"] == "metric":  # N-pair layout: [a0, p0, a1, p1, ...], one pair per class
        labels = torch.arange(GLOBAL_BATCH // 2).repeat_interleave(2)
    if hasattr(method, "rotation_positive"):  # PNDA: some images rotation-positive, as RAIS would mark them
        method.rotation_positive[::3] = True
    local = slice(rank() * GLOBAL_BATCH // world_size(), (rank() + 1) * GLOBAL_BATCH // world_size())
    if knobs["method"] == "rais":
        method.before_epoch(0, 1, None)  # rais_rotation_epochs=0: the eq. (4) phase
    if knobs["method"] == "pcl":  # prototypes from k-means over a small "dataset", identical on every worker
        images = torch.randint(0, 256, (32, 1, 28, 28), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
        method.before_epoch(0, 1, EpochData(images, torch.zeros(32, dtype=torch.long), EvalView("fashion_mnist", 28),
                                            torch.device("cpu")))
    out = optimisation_step(method, optimizer, [v[local] for v in views], labels[local], 0, 1,
                            torch.arange(GLOBAL_BATCH)[local])
    loss = torch.tensor([out.loss.item()])
    if world_size() > 1:
        torch.distributed.all_reduce(loss)
    return {"loss": loss.item() / world_size(),
            "grads": {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None},
            # after the step: BN statistics, queues, EMA teachers -- identical on every worker
            "state": {n: t.clone() for n, t in method.state_dict().items() if t.is_floating_point()}}


def _worker(config: dict) -> None:
    import ray.train

    results = [one_step(knobs, workers=2) for knobs in METHODS]
    if ray.train.get_context().get_world_rank() == 0:
        torch.save(results, config["out"])
    ray.train.report({"finished": 1})


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_workers_equal_one_worker(ray_cluster, tmp_path: Path):
    from lab.ray_train import make_trainer

    out = tmp_path / "two_workers.pt"
    trainer = make_trainer(RunConfig(scale="smoke", batch_size=GLOBAL_BATCH, workers=2), tmp_path, "equivalence",
                           loop=_worker, loop_config={"out": str(out)})
    trainer.fit()
    two = torch.load(out)
    for knobs, distributed in zip(METHODS, two):
        single = one_step(knobs, workers=1)
        assert distributed["loss"] == pytest.approx(single["loss"], abs=1e-5), knobs
        assert single["grads"].keys() == distributed["grads"].keys()
        # to 1e-5 of each tensor's scale (absolute 1e-5 below scale 1: Barlow Twins' gradients reach ~20,
        # where float32 summation order alone moves them by ~1e-4)
        for kind in ("grads", "state"):
            for name, value in single[kind].items():
                error = (distributed[kind][name] - value).abs().max().item()
                assert error <= 1e-5 * max(1.0, value.abs().max().item()), (knobs, kind, name, error)


def test_gather_backward_sums_over_workers_not_slices():
    """Without torch.distributed, gather is the identity: the multi-worker case is covered above."""
    from lab.distributed import gather_with_grad

    x = torch.randn(3, 2, requires_grad=True)
    gather_with_grad(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 2))


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
