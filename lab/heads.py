"""Projection heads g(h) and predictors, as configured: none / linear / MLP of any depth.

SimCLR (Chen et al. 2020, Sec. 4.2) compares exactly these three; the MLP is
Linear-BN-ReLU repeated (layers - 1) times then a Linear, optionally followed by BN
(SimSiam puts BN on the projector's output, Chen & He 2021, Sec. 4).
"""

from __future__ import annotations

from torch import nn

from lab.knobs import Knob, per_scale

HEADS = ("none", "linear", "mlp")
KNOBS = (  # the projection head of every method that has one (a run-level vocabulary)
    Knob("head", str, "mlp", "projection head g: none, one linear layer, or an MLP (SimCLR Sec. 4.2)", choices=HEADS),
    Knob("head_layers", int, 2, "linear layers of the MLP head", low=1),
    Knob("head_hidden_dim", int, per_scale(smoke=64, cpu=512, gpu=2048), "width of the head's hidden layers", low=1),
    Knob("head_out_dim", int, per_scale(smoke=32, cpu=128, gpu=2048), "width of the head's output z", low=1),
)
# The predictor h of SimSiam and BYOL (shared by both: one name each).
PREDICTOR = Knob("predictor", bool, True, "use the predictor h on the online branch (off: the ablation that "
                 "collapses, SimSiam Sec. 4.2 / BYOL Table 5b)")
PREDICTOR_HIDDEN_DIM = Knob("predictor_hidden_dim", int, per_scale(smoke=16, cpu=64, gpu=512),
                            "hidden width of the predictor h", low=1)


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int, last_bn: bool = False) -> nn.Sequential:
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        blocks.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*blocks)


def projection_head(kind: str, in_dim: int, hidden_dim: int, out_dim: int, layers: int,
                    last_bn: bool = False) -> tuple[nn.Module, int]:
    """The head and the width of its output."""
    if kind == "none":
        return nn.Identity(), in_dim
    if kind == "linear":
        return mlp(in_dim, hidden_dim, out_dim, 1, last_bn), out_dim
    if kind == "mlp":
        return mlp(in_dim, hidden_dim, out_dim, layers, last_bn), out_dim
    raise ValueError(f"head={kind!r}: choose one of {HEADS}")
