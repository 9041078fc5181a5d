"""Subprocesses of a test in their own process session, and killing exactly that session: a local Ray
cluster a driver started (GCS, raylet, workers) goes with it, and nothing else on the machine does
(unlike `ray stop --force`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_env(**extra: str) -> dict[str, str]:
    """The environment of a test's subprocess: its own Ray (a RAY_ADDRESS of the machine's is dropped; one
    the test started itself is passed in `extra`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return {**env, **extra}


test_env.__test__ = False  # a helper that test modules import, not a test


def start(args: list[str], console: Path, **env: str) -> subprocess.Popen:
    """`python args...` in the repository, output to a file (nobody drains a pipe while a test waits)."""
    with open(console, "w") as sink:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=test_env(**env), stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL the process and every process of its session."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    for _ in range(5):
        table = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split()
        pids = [int(pid) for pid, sid in zip(table[::2], table[1::2]) if int(sid) == process.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids:
            break
        time.sleep(1)


def wait_for(condition, timeout: float, every: float = 0.2) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRay:
    """A Ray head of this test's own: `ray start --head` on a free port, in its own process session, with a short
    temp dir (AF_UNIX socket paths are capped at 107 bytes: pytest's tmp_path is too long); `stop()` kills that
    session only. Drivers reach it through `address` (RAY_ADDRESS)."""

    def __init__(self, cpus: int = 2, **env: str):
        """`env`: more of the node's environment (what its trials see, beside what a driver's job carries)."""
        self._prepare()
        self._start(cpus, [], test_env(**env))

    def _prepare(self) -> None:
        """A short temp dir and a free port for the head (its drivers' `address`)."""
        import tempfile

        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def _start(self, cpus: int, more_args: list[str], env: dict[str, str]) -> None:
        """`ray start --head` of `cpus` CPUs with `more_args`, in its own session; back when its port answers."""
        ray = str(Path(sys.executable).with_name("ray"))
        self.process = subprocess.Popen(
            [ray, "start", "--head", "--block", f"--port={self.port}", f"--num-cpus={cpus}", "--num-gpus=0",
             "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--temp-dir={self.temp_dir}",
             "--disable-usage-stats", *more_args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if not wait_for(self._up, timeout=60, every=0.5):
            self.stop()
            raise RuntimeError(f"the test's Ray head did not come up in 60 s ({type(self).__name__})")

    def _up(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        import shutil

        kill_session(self.process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


AUTOSCALING_BASE = {  # what `ray up` fills in; Ray 2.60's wheel lacks fake_multi_node/example.yaml, which held it
    "upscaling_speed": 1.0, "auth": {"ssh_user": "ubuntu"}, "docker": {}, "file_mounts": {},
    "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
    "head_start_ray_commands": [], "worker_start_ray_commands": []}


class LocalAutoscalingRay(LocalRay):
    """An autoscaling Ray cluster on this machine (Ray's fake_multinode provider: each node a raylet of its own),
    started as LocalRay is, in its own process session, so that `stop()` takes the head, its autoscaler and
    every node it added, and nothing else (Ray's AutoscalingCluster runs `ray stop --force`, which kills every
    Ray on the machine). The head has no CPUs: trials run on the `worker_cpus`-CPU nodes the autoscaler adds
    (0 to `max_workers`), which go after `idle_timeout_s` without work. Token authentication is on; drivers
    reach it with `address` and `env`."""

    def __init__(self, worker_cpus: int = 1, max_workers: int = 2, idle_timeout_s: float = 10.0,
                 token: str = "lab-test-token-0123456789abcdef"):
        import json

        self._prepare()
        self.token = token
        config = {**AUTOSCALING_BASE, "cluster_name": "lab-test", "max_workers": max_workers,
                  "idle_timeout_minutes": idle_timeout_s / 60,
                  "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                               "disable_launch_config_check": True, "gcs_address": self.address,
                               "launch_multiple": True},  # as a cloud provider does: count nodes per request
                  "available_node_types": {
                      "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                      "cpu_worker": {"resources": {"CPU": worker_cpus}, "node_config": {}, "min_workers": 0,
                                     "max_workers": max_workers}},
                  "head_node_type": "ray.head.default"}
        config_path = Path(self.temp_dir) / "autoscaling.json"
        config_path.write_text(json.dumps(config))
        self._start(0, [f"--autoscaling-config={config_path}"],
                    {**self.env(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})

    def env(self, token: str | None = None, **extra: str) -> dict[str, str]:
        """A driver's environment for this cluster (another token: what a stranger would send)."""
        return test_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token or self.token, RAY_ADDRESS=self.address, **extra)
