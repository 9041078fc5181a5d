import pytest

from lab.config import ConfigError, RunConfig


@pytest.mark.parametrize("changes, message", [
    (dict(temperature=0.0), "temperature=0.0: the temperature tau must be > 0"),
    (dict(temperature=-1.0), "temperature"),
    (dict(batch_size=1), "batch_size=1: needs an integer >= 2"),
    (dict(method="simclrr"), "method='simclrr' is unknown; choose one of"),
    (dict(scale="huge"), "scale='huge' is unknown"),
    (dict(batch_size=10, workers=4), "must divide evenly over workers=4"),
    (dict(head="deep"), "head='deep'"),
    (dict(dataset="mnist"), "dataset='mnist' is unknown"),
    (dict(backbone="resnet9000"), "backbone='resnet9000' is unknown"),
    (dict(blur_p=1.5), "blur_p=1.5: a probability"),
])
def test_bad_values_fail_at_birth_with_what_and_where(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        RunConfig(**changes)


def test_unknown_key_names_the_key_and_the_place():
    with pytest.raises(ConfigError, match=r"trial config: unknown key\(s\) \['tau'\]"):
        RunConfig.from_dict({"tau": 0.2}, where="trial config")


def test_resolved_fills_scale_and_method_defaults():
    cfg = RunConfig(scale="gpu", method="simsiam", batch_size=512).resolved()
    assert cfg.backbone == "resnet18_cifar" and cfg.optimizer == "sgd" and cfg.base_lr == 0.05
    assert cfg.lr == pytest.approx(0.05 * 512 / 256)  # SimSiam's linear scaling rule
    small = RunConfig(scale="smoke", batch_size=1024).resolved()
    assert small.backbone == "convnet_tiny" and small.optimizer == "adamw" and small.lr == pytest.approx(2e-3 * 2)
    assert small.blur_p == 0.5 and small.jitter_strength == 1.0  # the dataset's recipe (lab.views.AUGMENTATION)
    assert RunConfig(dataset="cifar10").resolved().blur_p == 0.0
    assert RunConfig(epochs=7).resolved().epochs == 7  # explicit values win


def test_fingerprint_ignores_execution_but_not_knobs():
    a = RunConfig(seed=1)
    assert a.fingerprint() == a.replace(workers=2, threads=4).fingerprint()
    assert a.fingerprint() != a.replace(temperature=0.2).fingerprint()
    assert set(a.to_row()) >= {"method", "batch_size", "temperature", "seed", "scale", "dataset"}
