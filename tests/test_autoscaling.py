"""A study on an autoscaling cluster (issue 15), on this machine: Ray's fake_multinode provider, each node a
raylet of its own, the head without CPUs, token authentication on (tests.processes.LocalAutoscalingRay: its
own process session and ports, so no other Ray on the machine is touched).

A stranger's token is refused; the smoke grid's 4 trials run on the 1-CPU nodes the autoscaler adds, never on
the head, and all 4 rows are there; the nodes go once the study is done. The node count over time (the study's
nodes.jsonl) is printed: `pytest -s` shows how the cluster grew and shrank."""

import json
import re
import subprocess
import sys
import time

import polars as pl

from tests.processes import ROOT, LocalAutoscalingRay

ALIVE = ("import ray, time, sys; ray.init(); t = time.time()\n"
         "while len([n for n in ray.nodes() if n['Alive']]) > 1 and time.time() - t < float(sys.argv[1]):\n"
         "    time.sleep(1)\n"
         "print('ALIVE', len([n for n in ray.nodes() if n['Alive']]), round(time.time() - t, 1))\n")


def test_a_study_runs_on_autoscaled_nodes_not_the_head_and_the_nodes_go_after_it(tmp_path):
    cluster = LocalAutoscalingRay(worker_cpus=1, max_workers=2, idle_timeout_s=10)
    try:
        stranger = subprocess.run([sys.executable, "-c", "import ray; ray.init(); print('CONNECTED')"], cwd=ROOT,
                                  env=cluster.env(token="not-the-cluster-token-0123456789"), capture_output=True,
                                  text=True, timeout=120)
        assert stranger.returncode != 0 and "CONNECTED" not in stranger.stdout, stranger.stderr[-2000:]

        out = tmp_path / "study"
        started = time.time()
        study = subprocess.run([sys.executable, "-m", "tests.small_study", "grid", str(out)], cwd=ROOT,
                               env=cluster.env(), capture_output=True, text=True, timeout=480)
        assert study.returncode == 0, study.stdout[-2000:] + study.stderr[-3000:]
        results = pl.read_parquet(out / "results.parquet")
        assert len(results) == 4 and (results["status"] == "ok").all()

        records = [json.loads(line) for line in (out / "nodes.jsonl").read_text().splitlines()]
        head = {n["node"] for r in records for n in r["nodes"] if n["head"]}
        workers = {n["node"] for r in records for n in r["nodes"] if not n["head"]}
        ran_on = set(results["node"].to_list())
        assert len(head) == 1 and not ran_on & head, (ran_on, head)
        assert ran_on <= workers and len(ran_on) == 2, (ran_on, workers)  # both added nodes took trials
        counts = [(round(r["t"] - started, 1), len(r["nodes"])) for r in records]
        print("\nnodes alive over the study (s since it started, nodes with the head):",
              " ".join(f"{t}:{n}" for t, n in counts))
        assert max(n for _, n in counts) == 3  # the head and 2 workers
        first_worker = next(t for t, n in counts if n >= 2)
        both = next(t for t, n in counts if n == 3)
        assert both - first_worker <= 6, counts  # both in one round (a sample apart): the grid's demand seen at once

        gone = subprocess.run([sys.executable, "-c", ALIVE, "90"], cwd=ROOT, env=cluster.env(), capture_output=True,
                              text=True, timeout=180)
        alive, waited = re.search(r"ALIVE (\d+) ([\d.]+)", gone.stdout).groups()
        print(f"worker nodes gone {waited} s after the study's driver ended (idle timeout 10 s)")
        assert alive == "1", gone.stdout + gone.stderr[-2000:]
    finally:
        cluster.stop()
