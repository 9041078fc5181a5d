"""The one config type: knobs declared with their methods, typed at birth, resolved once, fingerprints that
survive a new knob, and a command line generated from the declarations."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.config import RunConfig, knob_table
from lab.errors import ConfigError
from lab.knobs import Knob

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("changes, message", [
    (dict(temperature=0.0), "temperature=0.0: needs a number > 0"),
    (dict(temperature=-1.0), "temperature=-1.0: needs a number > 0"),
    (dict(batch_size=1), "batch_size=1: needs an integer >= 2"),
    (dict(method="simclrr"), "method='simclrr' is unknown; choose one of"),
    (dict(scale="huge"), "scale='huge' is unknown"),
    (dict(batch_size=10, workers=4), "must divide evenly over workers=4"),
    (dict(head="deep"), "head='deep' is unknown"),
    (dict(dataset="mnist"), "dataset='mnist' is unknown"),
    (dict(backbone="resnet9000"), "backbone='resnet9000' is unknown"),
    (dict(blur_p=1.5), "blur_p=1.5: needs a number in [0, 1]"),
    # typed at birth: a string where a number belongs, a fractional epoch count, a non-integer seed
    (dict(temperature="0.5"), "temperature='0.5': needs a number > 0"),
    (dict(epochs=2.5), "epochs=2.5: needs an integer >= 1"),
    (dict(seed=1.5), "seed=1.5: needs an integer >= 0"),
    (dict(seed=True), "seed=True: needs an integer >= 0"),
    (dict(epochs=None), "epochs=None: needs an integer >= 1; leave it out for the default"),
    (dict(method="moco", ema_momentum=1.5), "ema_momentum=1.5: needs a number in [0, 1]"),
    (dict(method="pcl", pcl_clusters=(10, 1)), "pcl_clusters=(10, 1): needs a comma-separated list of integers, "
                                               "each >= 2"),
    (dict(method="rais", rais_margin=0.7), "rais_margin=0.7: needs a number in [0, 0.693147)"),
])
def test_bad_values_fail_at_birth_with_what_and_where(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[").replace(")", r"\)")):
        RunConfig(**changes)


def test_a_knob_of_another_method_and_an_unknown_knob_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"temperature is a knob of simclr, moco, .*not of method byol"):
        RunConfig(method="byol", temperature=0.2)
    with pytest.raises(ConfigError, match=r"unknown knob\(s\) tempurature \(did you mean temperature\?\)"):
        RunConfig(tempurature=0.2)
    with pytest.raises(ConfigError, match=r"trial config: unknown knob\(s\) tau"):
        RunConfig.from_dict({"tau": 0.2}, where="trial config")
    with pytest.raises(AttributeError, match="vat_epsilon is not a knob of method simclr"):
        RunConfig().vat_epsilon  # noqa: B018


def test_defaults_resolve_in_one_order_given_then_method_then_knob():
    cfg = RunConfig(scale="gpu", method="simsiam", batch_size=512)
    assert cfg.backbone == "resnet18_cifar" and cfg.optimizer == "sgd" and cfg.base_lr == 0.05
    assert cfg.lr == pytest.approx(0.05 * 512 / 256)  # SimSiam's linear scaling rule
    small = RunConfig(scale="smoke", batch_size=1024)
    assert small.backbone == "convnet_tiny" and small.optimizer == "adamw" and small.lr == pytest.approx(2e-3 * 2)
    assert small.blur_p == 0.5 and small.jitter_strength == 1.0  # the dataset's recipe (lab.views.AUGMENTATION)
    assert RunConfig(dataset="cifar10").blur_p == 0.0
    assert RunConfig(epochs=7).epochs == 7  # explicit values win
    assert RunConfig(method="moco").temperature == 0.2 and RunConfig().temperature == 0.5  # the method's default
    assert RunConfig(method="byol", scale="cpu").ema_momentum == 0.95  # the method's per-scale default
    assert RunConfig(method="byol", scale="gpu").ema_momentum == 0.996
    assert RunConfig(method="byol", head_hidden_dim=96).predictor_hidden_dim == 96  # a rule over another knob
    assert RunConfig(method="swav", scale="gpu").local_crops == 6 and RunConfig(method="swav").local_crops == 0
    assert RunConfig(method="contrastive_clustering", dataset="cifar100").cc_clusters == 100
    assert RunConfig(method="pcl", scale="cpu").pcl_clusters == (10, 25, 50)
    assert RunConfig(scale="smoke", train_subset=None).train_subset is None  # None given: the whole split


def test_the_row_has_every_knob_and_none_where_the_method_has_no_such_knob():
    row = RunConfig(method="simclr").to_row()
    assert set(row) == set(knob_table().knobs)
    assert row["temperature"] == 0.5 and row["vat_epsilon"] is None and row["ema_momentum"] is None
    assert RunConfig(method="moco").to_row()["ema_momentum"] == 0.99


def test_shared_knobs_have_one_declaration_and_every_method_default_names_a_knob_it_has():
    table = knob_table()  # building it checks both
    assert table.groups["ema_momentum"] == ["moco", "byol", "pcl", "dino", "pnda"]
    assert "moco_momentum" not in table.knobs and "queue_size" not in table.knobs
    from lab.knobs import KnobTable

    duplicate = KnobTable()
    duplicate.add("a", [Knob("x", int, 1, "x")])
    with pytest.raises(ValueError, match="declared twice"):
        duplicate.add("b", [Knob("x", int, 1, "another x")])


def test_fingerprint_ignores_execution_and_defaults_but_not_knobs():
    a = RunConfig(seed=1)
    assert a.fingerprint() == a.replace(workers=2, threads=4, data_root="/elsewhere").fingerprint()
    assert a.fingerprint() != a.replace(temperature=0.2).fingerprint()
    assert a.fingerprint() == a.replace(temperature=0.5).fingerprint()  # SimCLR's default, given or not
    assert RunConfig(scale="smoke").fingerprint() != RunConfig(scale="cpu").fingerprint()


def test_adding_a_knob_with_a_default_keeps_fingerprints_and_checkpoints_valid(monkeypatch):
    from lab.methods.simclr import SimCLR

    before = RunConfig(method="simclr", temperature=0.3, scale="smoke")
    stored = before.to_row()
    monkeypatch.setattr(SimCLR, "knobs", (*SimCLR.knobs, Knob("simclr_new_knob", float, 1.0, "a new knob")))
    knob_table.cache_clear()
    try:
        after = RunConfig(method="simclr", temperature=0.3, scale="smoke")
        assert after.simclr_new_knob == 1.0
        assert after.fingerprint() == before.fingerprint()
        assert after.differences(stored) == []  # a checkpoint from before the knob resumes
        changed = after.replace(simclr_new_knob=2.0)
        assert changed.fingerprint() != before.fingerprint()
        assert changed.differences(stored) == ["simclr_new_knob=2.0 (the stored run predates this knob: it ran at "
                                               "the default)"]
    finally:
        monkeypatch.undo()
        knob_table.cache_clear()
    assert before.differences({**stored, "temperature": 0.5}) == ["temperature: stored 0.5, now 0.3"]


def test_stage_config_keeps_the_given_knobs_the_stage_method_has():
    cfg = RunConfig(method="pnda", scale="smoke", moco_queue_size=256, batch_size=64, rais_margin=0.3, base_lr=0.01)
    stage = cfg.for_method(cfg.method_class.stages(cfg)["rais"])
    assert stage.method == "rais" and stage.epochs == cfg.rais_rotation_epochs + cfg.rais_separation_epochs
    assert stage.rais_margin == 0.3 and stage.batch_size == 64
    assert stage.base_lr == RunConfig(method="rais", scale="smoke").base_lr  # RAIS's own recipe, not PNDA's lr


def test_command_line_help_comes_from_the_declarations_and_errors_are_one_line_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    help_text = subprocess.run([sys.executable, "-m", "lab.train", "--help"], cwd=ROOT, env=env,
                               capture_output=True, text=True, check=True).stdout
    for heading in ("run:", "views:", "shared by several methods:", "method dino:", "method metric:"):
        assert heading in help_text, heading
    assert "--temperature X" in help_text and "simclr 0.5, moco 0.2" in " ".join(help_text.split())
    assert "--dino_centering {true,false}" in help_text
    bad = subprocess.run([sys.executable, "-m", "lab.train", "--out", str(tmp_path / "run"), "--epochs", "2.5"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: command line: epochs='2.5': needs an integer >= 1"]
