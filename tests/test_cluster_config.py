"""cluster/cluster.yaml against Ray's own autoscaler schema, and against what makes it safe: every file it
mounts from the repository exists, every Ray process starts with token authentication and the token file is
mounted on every node, the dashboard and Jobs API stay on 127.0.0.1, no metrics are collected, nothing
listens on 0.0.0.0; and it has the worker types the scales need."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "/home/ubuntu/.ray/auth_token"


def _config() -> dict:
    return yaml.safe_load((ROOT / "cluster" / "cluster.yaml").read_text())


def test_the_cluster_config_passes_rays_autoscaler_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(_config())  # merged with the provider's defaults, as `ray up` does
    try:
        validate_config(config)
    except jsonschema.ValidationError as exc:  # the message names the field
        raise AssertionError(f"cluster/cluster.yaml: {exc.message} at {list(exc.absolute_path)}") from None


def test_the_cluster_config_is_safe_and_every_file_it_names_exists():
    config, text = _config(), (ROOT / "cluster" / "cluster.yaml").read_text()
    assert "0.0.0.0" not in text
    mounts = config["file_mounts"]
    assert mounts[TOKEN] == "~/.ray/auth_token"  # made by `ray get-auth-token --generate` where you launch
    for remote, local in mounts.items():
        if not local.startswith("~"):
            assert (ROOT / local).exists(), f"file_mounts {remote}: {local} is not in the repository"
    for command in config["setup_commands"]:
        for script in re.findall(r"bash (\S+\.sh)", command):
            assert (ROOT / script).exists(), command
        for module in re.findall(r"python -m ([\w.]+)", command):
            assert (ROOT / Path(*module.split("."))).with_suffix(".py").exists() or \
                (ROOT / Path(*module.split(".")) / "__main__.py").exists(), command
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command and f"RAY_AUTH_TOKEN_PATH={TOKEN}" in command, command
        assert "RAY_enable_metrics_collection=0" in command and "LAB_DATA=" in command, command
    head = next(c for c in starts if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head


def test_the_cluster_has_cpu_and_gpu_worker_types_and_a_head_without_trials():
    types = _config()["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    instance = {name: t["node_config"]["InstanceType"] for name, t in types.items()}
    assert instance["cpu_worker"].startswith("c") and instance["gpu_worker"].startswith("g")
    assert any(name.startswith("gpu_worker_") for name in types)  # several GPUs on one node: nccl workers
    assert all(t["max_workers"] >= 1 for name, t in types.items() if name != "head")
