"""Trust: nothing runs that the user did not write, no result comes from data the user did not name, no
study is corrupted by another, bad input is found before Ray and reported in one line, scripts can rely
on exit codes and JSON, and a study's own Ray listens on loopback only. Every malicious file is written
here, by the test."""

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lab.errors import CheckpointError, ConfigError, DatasetError
from tests.fixtures import write_cifar10, write_fashion_mnist
from tests.processes import ROOT, kill_session, start, test_env, wait_for

TINY = ["--scale", "smoke", "--train_subset", "128", "--eval_subset", "64", "--test_subset", "32",
        "--linear_epochs", "1", "--batch_size", "64", "--threads", "1", "--quiet"]


class _RunsCode:
    """Unpickling this runs a shell command (what a crafted checkpoint or dataset file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _lab_train(*args: str) -> subprocess.CompletedProcess:
    """`python -m lab.train ARGS` run in this process (its main: exit code, stdout, stderr), as a process would
    see it, without the ~4 s a new process takes to import torch; a bug's traceback fails the test here. The
    studies' command lines below run as processes, and so does one lab.train (the diverged run)."""
    import contextlib
    import io

    from lab.cli import main

    out, err, threads, code = io.StringIO(), io.StringIO(), torch.get_num_threads(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            torch.set_num_threads(threads)  # --threads set it for this process
    return subprocess.CompletedProcess(["lab.train", *args], code, out.getvalue(), err.getvalue())


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a failed command (progress and notices, '[lab] ...', may stand beside it)."""
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("[lab]")]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------ code execution from files

def test_a_crafted_checkpoint_in_out_is_refused_unread(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "ran"
    out.mkdir()
    torch.save({"format": 2, "method": _RunsCode(marker)}, out / "checkpoint.pt")
    line = _one_error_line(_lab_train("--out", str(out), *TINY))
    assert not marker.exists(), "the checkpoint's code ran"
    assert str(out / "checkpoint.pt") in line and "is not a lab checkpoint" in line


def test_a_crafted_init_from_is_refused_unread(tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"method": _RunsCode(marker)}, evil)
    line = _one_error_line(_lab_train("--out", str(tmp_path / "run"), "--method", "supervised", "--init_from",
                                      str(evil), *TINY))
    assert not marker.exists() and str(evil) in line and "is not a lab checkpoint" in line


def test_the_labs_own_checkpoints_load_weights_only_and_a_truncated_one_names_the_file_and_the_fix(tmp_path):
    from lab.checkpoint import load_state_file

    out = tmp_path / "run"
    assert _lab_train("--out", str(out), "--epochs", "1", *TINY).returncode == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # nothing but tensors, containers, numbers
    assert state["format"] == 2 and state["result"]["status"] == "ok"
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is damaged or truncated .*start the run afresh in "
                                              r"another output folder, or delete"):
        load_state_file(out / "checkpoint.pt")
    line = _one_error_line(_lab_train("--out", str(out), "--epochs", "1", *TINY))
    assert str(out / "checkpoint.pt") in line and "delete" in line
    (out / "checkpoint.pt").write_bytes(pickle.dumps({"not": "a lab checkpoint"}))
    with pytest.raises(CheckpointError, match="is not a lab checkpoint"):
        load_state_file(out / "checkpoint.pt")


def test_a_crafted_cifar_batch_is_refused_unread(tmp_path):
    from lab.data.formats import read_cifar_batches

    write_cifar10(tmp_path)
    batch, marker = tmp_path / "cifar-10-batches-py" / "data_batch_1", tmp_path / "ran"
    with open(batch, "wb") as fh:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, fh)
    with pytest.raises(DatasetError, match=r"data_batch_1: refused, not a CIFAR batch \(it names posix.system"):
        read_cifar_batches([batch], b"labels", "fix")
    assert not marker.exists()
    with open(batch, "wb") as fh:  # the right shape, the wrong content: float pixels
        import numpy as np

        pickle.dump({b"data": np.zeros((2, 3072), dtype=np.float32), b"labels": [0, 1]}, fh)
    with pytest.raises(DatasetError, match="an array of dtype float32"):
        read_cifar_batches([batch], b"labels", "fix")


# ------------------------------------------------------------------------------ data the user named

def test_a_data_root_given_is_the_only_place_read(tmp_path):
    from lab.config import RunConfig
    from lab.data import _load_cached
    from lab.splits import load_run_data

    _load_cached.cache_clear()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=rf"data_root={empty}: Fashion-MNIST is not there .*only the data_root "
                                           r"given is read"):
        load_run_data(RunConfig(scale="smoke", data_root=str(empty)))
    partial = tmp_path / "partial"
    write_fashion_mnist(partial)
    (partial / "train-images-idx3-ubyte.gz").unlink()  # today: the training images came from Debian's copy
    with pytest.raises(DatasetError, match="missing train-images-idx3-ubyte.gz"):
        load_run_data(RunConfig(scale="smoke", data_root=str(partial)))
    mine = tmp_path / "mine"
    write_fashion_mnist(mine, n_train=200, n_test=50)
    data = load_run_data(RunConfig(scale="smoke", data_root=str(mine), train_subset=None, test_subset=None))
    assert len(data.train) == 200 and len(data.test) == 50
    assert data.sources == {"train_data_source": str(mine.resolve()), "test_data_source": str(mine.resolve())}
    default = load_run_data(RunConfig(scale="smoke"))
    assert default.sources["train_data_source"] == default.sources["test_data_source"]  # one place for both
    _load_cached.cache_clear()


def test_the_row_records_where_each_split_came_from_and_a_resume_refuses_another_data_source(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_fashion_mnist(first, n_train=200, n_test=50, seed=0)
    write_fashion_mnist(second, n_train=200, n_test=50, seed=1)
    out = tmp_path / "run"
    args = [*TINY, "--epochs", "2"]
    killed = start(["-m", "lab.train", "--out", str(out), "--data_root", str(first), *args], tmp_path / "first.txt")
    wait_for(lambda: (out / "checkpoint.pt").exists() and not (out / "result.json").exists(), timeout=120, every=0.02)
    kill_session(killed)
    if (out / "result.json").exists():
        pytest.skip("the run finished before it could be stopped")
    line = _one_error_line(_lab_train("--out", str(out), "--data_root", str(second), *args))
    assert "was trained on other data" in line and str(first.resolve()) in line and str(second.resolve()) in line
    assert _lab_train("--out", str(out), "--data_root", str(first), *args).returncode == 0
    row = json.loads((out / "result.json").read_text())
    assert row["train_data_source"] == row["test_data_source"] == str(first.resolve())


# ------------------------------------------------------------------------------ one study per folder

def test_a_second_study_on_the_same_folder_stops_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "study"
    args = ["studies/batch_size.py", "--scale", "smoke", "--out", str(out)]
    first = start(args, tmp_path / "first.txt")
    try:
        assert wait_for(lambda: (out / ".lab.lock").exists(), timeout=60)
        began = time.time()
        second = subprocess.run([sys.executable, *args], cwd=ROOT, env=test_env(), capture_output=True, text=True,
                                timeout=120)
        assert time.time() - began < 30, "the second study must stop at once, not after Ray starts"
        line = _one_error_line(second)
        holder = json.loads((out / ".lab.lock").read_text())
        assert f"in use by another study (process {first.pid} on {holder['host']}" in line
        assert holder["pid"] == first.pid
        assert not list((out / "tune").glob("*/")) or first.poll() is None
    finally:
        kill_session(first)
    # the first study was killed: its lock is stale, taken over (and said) by the next study on the folder
    from lab.lockfile import FolderLock

    assert (out / ".lab.lock").exists()
    stale = subprocess.run([sys.executable, "-c", "from lab.lockfile import FolderLock\n"
                            f"with FolderLock({str(out)!r}): print('held')"], cwd=ROOT, env=test_env(),
                           capture_output=True, text=True)
    assert stale.stdout.strip() == "held" and "took over the lock of process" in stale.stderr
    assert not (out / ".lab.lock").exists()
    with FolderLock(out), FolderLock(out / "part"):  # a study's parts live under its lock
        pass


def test_a_lock_held_on_another_host_is_refused_with_the_command_that_removes_it(tmp_path):
    from lab.lockfile import FolderLock

    tmp_path.joinpath(".lab.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0,
                                                          "command": "studies/batch_size.py"}))
    with pytest.raises(ConfigError, match=r"in use by another study \(process 1 on elsewhere.*if it is gone from "
                                          r"elsewhere, delete .*\.lab\.lock"):
        with FolderLock(tmp_path):
            pass


# ------------------------------------------------------------------------------ bad input, found early

def test_bad_spaces_data_sizes_and_out_files_are_refused_before_ray_starts(tmp_path):
    import ray
    from ray import tune

    from studies.runner import run_study

    fixed = dict(scale="smoke", method="simclr", batch_size=64)
    with pytest.raises(ConfigError, match=r"temperature = Float _Uniform lower=-1 upper=0 reaches -1.0"):
        run_study("bad", fixed, {"temperature": tune.uniform(-1, 0)}, tmp_path / "a", num_samples=2)
    with pytest.raises(ConfigError, match="batch_size=4096 exceeds the 2048 training images"):
        run_study("big", {**fixed, "batch_size": 4096}, {"seed": [0]}, tmp_path / "b")
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError, match=rf"--out {a_file}: {a_file} is a file, not a folder"):
        run_study("file", fixed, {"seed": [0]}, a_file)
    assert not ray.is_initialized()
    line = _one_error_line(_lab_train("--out", str(a_file), *TINY))
    assert "is a file, not a folder" in line
    study = subprocess.run([sys.executable, "studies/batch_size.py", "--scale", "smoke", "--out", str(a_file)],
                           cwd=ROOT, env=test_env(), capture_output=True, text=True, timeout=120)
    assert "is a file, not a folder" in _one_error_line(study)
    study = subprocess.run([sys.executable, "studies/batch_size.py", "--scale", "smoke", "--seeds", "0", "--out",
                            str(tmp_path / "c")], cwd=ROOT, env=test_env(), capture_output=True, text=True)
    assert "--seeds 0: give the number of seeds per cell, >= 1" in _one_error_line(study)


def test_an_unreadable_gz_is_one_line_without_a_traceback(tmp_path):
    write_fashion_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08 this is not gzip")
    line = _one_error_line(_lab_train("--out", str(tmp_path / "run"), "--data_root", str(tmp_path), *TINY))
    assert "train-labels-idx1-ubyte.gz: cannot be read" in line


def test_a_trial_that_fails_deterministically_is_not_retried_and_its_status_is_one_line(tmp_path, ray_head):
    """The trial's init_from is a file that is not a checkpoint: only the trial can find out (the driver checks
    that it exists). The trial ends with its row, failed, without the retry a transient error would get."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    log = tmp_path / "trials.log"
    code = ("import sys; from studies.runner import run_study; "
            "run_study('junk', dict(scale='smoke', method='supervised', batch_size=64, train_subset=256, "
            "eval_subset=128, test_subset=64, linear_epochs=1, threads=1, init_from=sys.argv[2]), {'seed': [0]}, "
            "sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "study"), str(junk)], cwd=ROOT,
                          env=test_env(LAB_TRIAL_LOG=str(log), RAY_ADDRESS=ray_head.address), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "failed"]
    import polars as pl

    status = pl.read_parquet(tmp_path / "study" / "results.parquet")["status"].to_list()
    assert len(status) == 1 and status[0].startswith("failed: CheckpointError: ") and str(junk) in status[0]
    assert "\n" not in status[0] and "\x1b" not in status[0] and status[0].endswith("junk.pt")


def test_a_trial_on_a_node_without_the_data_fails_at_once_naming_the_node_and_the_fix(tmp_path):
    """The driver has CIFAR-10 (in its data root, ~/.cache/lab-data: its HOME here) and checks it up front; the
    node the trial lands on has another HOME and no data, as a cluster node whose set-up skipped the dataset. The
    trial ends at once with its row, failed, naming that node and how every node gets the data; not retried."""
    from tests.fixtures import write_cifar10
    from tests.processes import LocalRay

    driver_home, node_home = tmp_path / "driver", tmp_path / "node"
    write_cifar10(driver_home / ".cache" / "lab-data")
    node_home.mkdir()
    log = tmp_path / "trials.log"
    code = ("import sys; from studies.runner import run_study; "
            "run_study('no_data', dict(scale='smoke', method='simclr', dataset='cifar10', batch_size=8, epochs=1, "
            "eval_subset=16, test_subset=8, linear_epochs=1, threads=1, knn_k=5), {'seed': [0]}, sys.argv[1])")
    node = LocalRay(cpus=1, HOME=str(node_home))
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "study")], cwd=ROOT, capture_output=True,
                              env=test_env(HOME=str(driver_home), LAB_TRIAL_LOG=str(log), RAY_ADDRESS=node.address),
                              text=True, timeout=300)
    finally:
        node.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "failed"]
    import polars as pl

    row = pl.read_parquet(tmp_path / "study" / "results.parquet").row(0, named=True)
    status = row["status"]
    assert status.startswith("failed: DatasetError: on node ") and row["node"] in status, status
    assert str(node_home) in status and "every node needs the data: `python -m lab.data DATASET`" in status, status
    assert "\n" not in status, status


# ------------------------------------------------------------------------------ exit codes and JSON

def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_diverged_run_exits_3_keeps_its_row_and_is_flagged_diverged_and_every_json_is_standard(tmp_path):
    out = tmp_path / "diverged"
    proc = subprocess.run([sys.executable, "-m", "lab.train", "--out", str(out), "--method", "vicreg", "--optimizer",
                           "sgd", "--base_lr", "1e6", *TINY], cwd=ROOT, env=test_env(), capture_output=True, text=True,
                          timeout=300)  # a process: its exit code is what a script sees
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    row = _strict_json((out / "result.json").read_text())
    assert row["status"].startswith("diverged: loss") and row["diverged"] is True and row["collapsed"] is None
    assert row["knn_top1"] is None and row["random_knn_top1"] is not None
    for line in (out / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)
    ok = tmp_path / "ok"
    assert _lab_train("--out", str(ok), "--epochs", "1", *TINY).returncode == 0
    row = _strict_json((ok / "result.json").read_text())
    assert row["diverged"] is False and row["collapsed"] in (True, False) and row["cluster_nmi"] is None


# ------------------------------------------------------------------------------ what listens

def test_a_local_ray_of_the_lab_listens_on_loopback_only(tmp_path):
    """The sockets the processes of a study's own Ray listen on (its session: the driver, GCS, raylet, agents,
    workers), read from /proc: every one on 127.0.0.1."""
    code = ("import os, sys, time; sys.path.insert(0, '.')\n"
            "from lab.ray_train import init_local_ray\n"
            "from tests.sockets import listening\n"
            "init_local_ray(num_cpus=1)\n"
            "import ray\n"
            "ray.get(ray.remote(lambda: 1).remote())\n"
            "time.sleep(2)\n"
            "print(sorted(listening(os.getsid(0))))\n"
            "ray.shutdown()\n")
    proc = subprocess.run(["setsid", sys.executable, "-c", code], cwd=ROOT, env=test_env(), capture_output=True,
                          text=True, timeout=120)
    sockets = eval(proc.stdout.strip().splitlines()[-1])
    assert len(sockets) >= 4, proc.stdout + proc.stderr[-2000:]  # GCS, raylet, agents: some are found
    wide = [s for s in sockets if s[0] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not wide, f"listening beyond loopback: {wide}"
