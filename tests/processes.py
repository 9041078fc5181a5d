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

    def __init__(self, cpus: int = 2):
        import tempfile

        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        ray = str(Path(sys.executable).with_name("ray"))
        self.process = subprocess.Popen(
            [ray, "start", "--head", "--block", f"--port={self.port}", f"--num-cpus={cpus}", "--num-gpus=0",
             "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--temp-dir={self.temp_dir}",
             "--disable-usage-stats"],
            cwd=ROOT, env=test_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if not wait_for(self._up, timeout=60, every=0.5):
            self.stop()
            raise RuntimeError("the test's Ray head did not come up in 60 s")

    def _up(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        import shutil

        kill_session(self.process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
