"""A study whose state is in an object store (`--storage s3://...`), against a real S3 endpoint on this machine
(moto's server): refusals up front, and a study SIGKILLed after its first trial that a driver with an empty local
mirror -- another machine, as far as the state goes -- resumes from the store alone, reruns no finished trial and
is then fetched into a third --out without Ray."""

import json
import logging

import polars as pl
import pytest

from lab.errors import ConfigError
from studies.runner import run_study
from studies.storage import LEASE_FILE, parse_storage
from tests.processes import free_port, kill_session, start, wait_for
from tests.test_study import _events

BUCKET = "lab-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("moto", reason="moto (the test extra) serves the S3 endpoint")
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    yield f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    server.stop()


@pytest.fixture
def credentials(monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)


def test_an_object_store_that_cannot_be_used_is_refused_before_anything_runs(tmp_path, s3_endpoint, credentials):
    from tests.small_study import FIXED

    out = tmp_path / "out"
    for uri, message in [(f"s3://{BUCKET}?{s3_endpoint}", "give a folder inside the bucket"),
                         (f"s3://no-such-bucket/study?{s3_endpoint}", "cannot write there from .*NO_SUCH_BUCKET")]:
        with pytest.raises(ConfigError, match=message):
            run_study("small_pair", FIXED, {"seed": [0]}, out, storage=uri)
    assert not out.exists()


def test_a_gcs_bucket_this_machine_cannot_reach_is_refused_in_one_line_not_after_pyarrows_retries(tmp_path,
                                                                                                    monkeypatch):
    """No network and no Google credentials here: pyarrow's GCS client would retry for 15 minutes; the probe
    retries for PROBE_RETRY_S (20 s; 1 here) and says what to check."""
    import time

    from tests.small_study import FIXED

    monkeypatch.setattr("studies.storage.PROBE_RETRY_S", 1)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot write there from .*GOOGLE_APPLICATION_CREDENTIALS") as refused:
        run_study("small_pair", FIXED, {"seed": [0]}, tmp_path / "out", storage="gs://lab-test/studies/pair")
    assert time.monotonic() - started < 30 and "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_a_study_in_an_object_store_resumes_from_it_alone(tmp_path, s3_endpoint, credentials, monkeypatch):
    uri = f"s3://{BUCKET}/studies/pair?{s3_endpoint}"
    store = parse_storage(uri)
    out, log = tmp_path / "study", tmp_path / "trials.log"
    args = ["-m", "tests.small_study", "pair", str(out), uri]
    # each driver starts its own Ray, whose workers see the credentials as a cluster node would; each has its own
    # mirror, as a driver on another machine would. The first one's Ray (its GCS and raylet: the head of its
    # cluster) is in its process session and dies with it: the second resumes on a new head, from the store
    first = start(args, tmp_path / "first.txt", LAB_TRIAL_LOG=str(log), LAB_STATE_CACHE=str(tmp_path / "mirror-1"),
                  **CREDENTIALS)
    assert wait_for(lambda: any(e == "done" for e, _ in _events(log)), 240), (tmp_path / "first.txt").read_text()
    kill_session(first)
    before = _events(log)
    finished_before = {t for e, t in before if e == "done"}
    assert len(finished_before) == 1, before
    assert store.exists(LEASE_FILE)  # the killed driver's, renewed a moment ago: taken over as gone from this host
    assert f"{next(iter(finished_before))}.json" in store.join("final_rows").names(".json")

    second = start(args, tmp_path / "second.txt", LAB_TRIAL_LOG=str(log), LAB_STATE_CACHE=str(tmp_path / "mirror-2"),
                   **CREDENTIALS)
    assert second.wait(timeout=300) == 0, (tmp_path / "second.txt").read_text()[-3000:]
    output = (tmp_path / "second.txt").read_text()
    assert "taking over the lease" in output and "(gone)" in output
    assert f"resuming {store.join('tune')}" in output
    # a trial whose snapshot names a checkpoint the killed driver had just deleted restores its newer one
    assert "does not exist on storage anymore" not in output and "Trial task failed" not in output
    events = _events(log)
    rerun = [t for e, t in events[len(before):] if e == "start" and t in finished_before]
    assert not rerun, f"finished trials were run again: {rerun}"
    assert sorted({t for e, t in events if e == "done"}) == sorted(t for e, t in events if e == "done")

    # the state is in the store, the results in --out, and nothing of the state there
    assert {"results.parquet", "history.parquet", "report.html", "study.json"} <= {p.name for p in out.iterdir()}
    assert not {"tune", "final_rows", "optuna.journal"} & {p.name for p in out.iterdir()}
    assert {"study.json", "optuna.journal", "nodes.jsonl"} <= set(store.names())
    assert len(store.join("final_rows").names(".json")) == 2 and not store.exists(LEASE_FILE)
    assert store.join("tune").names("")  # Tune's experiment state and the trials' checkpoints
    study = json.loads(store.read_text("study.json"))
    assert study["experiments"][-1]["finished"] and (out / "study.json").read_text() == store.read_text("study.json")
    results = pl.read_parquet(out / "results.parquet")
    assert len(results) == 2 and (results["status"] == "ok").all() and results["batch_size"].to_list() == [32, 64]
    # the Optuna study in the store's journal: one study, both points told once (the second driver's searcher
    # carried on the journal it fetched; a fresh one would hold the first point twice, or not at all)
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    (tmp_path / "journal").write_text(store.read_text("optuna.journal"))
    studies = JournalStorage(JournalFileBackend(str(tmp_path / "journal"))).get_all_studies()
    assert [s.study_name for s in studies] == ["small_pair"]
    trials = optuna.load_study(study_name="small_pair", storage=JournalStorage(
        JournalFileBackend(str(tmp_path / "journal")))).get_trials()
    told = sorted(t.params["batch_size"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert told == [32, 64], [(t.number, t.state.name, t.params) for t in trials]

    # fetched into a third --out by the same call: from the store alone, no Ray
    from tests.small_study import FIXED, SPACES
    fetched = tmp_path / "fetched"
    monkeypatch.setenv("LAB_STATE_CACHE", str(tmp_path / "mirror-3"))
    run_study("small_pair", {**FIXED, **SPACES["pair"][3]}, SPACES["pair"][0], fetched, report="batch_size",
              storage=uri)
    assert pl.read_parquet(fetched / "results.parquet").equals(results)


def test_a_live_lease_refuses_a_second_study(tmp_path, s3_endpoint, credentials):
    from tests.small_study import FIXED

    uri = f"s3://{BUCKET}/studies/leased?{s3_endpoint}"
    holder = start(["-c", "import time; time.sleep(60)"], tmp_path / "holder.txt")
    try:
        parse_storage(uri).write_text(LEASE_FILE, json.dumps({"pid": holder.pid, "host": "another-host",
                                                             "renewed": __import__("time").time(),
                                                             "command": "python studies/x.py"}))
        with pytest.raises(ConfigError, match=r"another study holds it \(process \d+ on another-host"):
            run_study("small_pair", FIXED, {"seed": [0]}, tmp_path / "out", storage=uri)
    finally:
        kill_session(holder)
    assert wait_for(lambda: holder.poll() is not None, 5)
