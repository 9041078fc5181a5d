"""python -m studies.sweep: the command line and its YAML twin become one study (fixed knobs, grid and
searched axes, seeds under every point), bad input is one line and exit 2, README's examples are valid
sweeps, and a small sweep runs end to end into its report."""

import re
from pathlib import Path

import polars as pl
import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from studies import sweep
from studies.runner import check_space, describe_domain, study_arguments
from tests.processes import kill_session, start, wait_for
from tests.small_study import check_asha_study

ROOT = Path(__file__).resolve().parents[1]


def _part(argv: list[str]):
    parser = study_arguments("", "results/sweep")
    sweep.add_arguments(parser)
    args = parser.parse_args(argv)
    args.config_content = sweep.read_config(args.config) if args.config else {}
    if args.config:
        parser.set_defaults(**{k: v for k, v in args.config_content.items() if k not in ("set", "grid", "search")})
        args = parser.parse_args(argv)
        args.config_content = sweep.read_config(args.config)
    (part,) = sweep.plan(args).parts
    return part


README_SWEEP = ["--method", "moco", "--grid", "moco_queue_size=1024,4096,16384", "--search",
                "temperature=loguniform:0.03:1", "--samples", "12", "--seeds", "2", "--scheduler", "asha",
                "--scale", "cpu", "--out", "results/my_sweep"]


def test_the_readme_command_is_a_grid_under_searched_points_with_seeds():
    text = (ROOT / "README.md").read_text()
    command = re.search(r"python -m studies\.sweep (.*?)\n\n?```", text, re.S).group(1)
    assert command.replace("\\\n", " ").split() == README_SWEEP
    part = _part(README_SWEEP)
    assert part.fixed["method"] == "moco" and part.fixed["scale"] == "cpu"
    assert part.fixed["validation_images"] == 1000  # a search selects on held-out training images
    assert part.space["moco_queue_size"] == [1024, 4096, 16384] and part.space["seed"] == [0, 1]
    domain = part.space["temperature"]
    assert isinstance(domain, Float) and describe_domain(domain) == "Float _LogUniform lower=0.03 upper=1.0"
    assert part.num_samples == 12 and part.scheduler == "asha" and part.report == "sweep"
    assert len(check_space(part.fixed, part.space)) == 6


def test_a_yaml_file_is_the_same_sweep_and_flags_override_it(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text("method: moco\nscale: cpu\nout: results/my_sweep\ngrid: {moco_queue_size: [1024, 4096, 16384]}\n"
                      "search: {temperature: 'loguniform:0.03:1'}\nsamples: 12\nseeds: 2\nscheduler: asha\n")
    from_file, from_flags = _part(["--config", str(config)]), _part(README_SWEEP)
    assert from_file.fixed == from_flags.fixed and from_file.num_samples == 12 and from_file.scheduler == "asha"
    assert {k: v if isinstance(v, list) else describe_domain(v) for k, v in from_file.space.items()} == \
        {k: v if isinstance(v, list) else describe_domain(v) for k, v in from_flags.space.items()}
    overridden = _part(["--config", str(config), "--samples", "20", "--grid", "moco_queue_size=512"])
    assert overridden.num_samples == 20 and overridden.space["moco_queue_size"] == [512]


def test_every_search_kind_becomes_its_tune_domain():
    domains = {name: sweep.parse_search(knob, spec, "--search") for name, (knob, spec) in {
        "loguniform": ("temperature", "loguniform:0.05:1"), "uniform": ("ema_momentum", "uniform:0.9:0.999"),
        "int": ("batch_size", "int:32:256"), "logint": ("moco_queue_size", "logint:256:65536"),
        "choice": ("moco_variant", "choice:queue,end_to_end")}.items()}
    assert isinstance(domains["uniform"], Float) and isinstance(domains["choice"], Categorical)
    assert (domains["int"].lower, domains["int"].upper) == (32, 257)  # the command line's HIGH is included
    assert isinstance(domains["logint"], Integer) and domains["choice"].categories == ["queue", "end_to_end"]
    assert sweep.parse_grid("pcl_clusters", "25,50;100,200", "--grid") == [(25, 50), (100, 200)]


@pytest.mark.parametrize("argv, message", [
    (["--method", "simclr", "--search", "tau=loguniform:0.1:1"], "--search: unknown knob 'tau'"),
    (["--method", "simclr", "--search", "temperature=log:0.1:1"], "the kind must be one of loguniform"),
    (["--method", "simclr", "--search", "temperature=loguniform:0:1"], "loguniform needs LOW > 0"),
    (["--method", "simclr", "--search", "batch_size=uniform:32:64"], "batch_size is an integer knob"),
    (["--method", "simclr", "--grid", "temperature=0.1,abc"], "temperature='abc'"),
    (["--method", "simclr", "--grid", "temperature=0.1,0.2", "--seeds", "0"], "--seeds 0: give the number"),
    (["--search", "temperature=loguniform:0.1:1"], "no method: give --method"),
    (["--method", "simclr"], "nothing to sweep"),
    (["--method", "simclr", "--grid", "temperature=0.1,0.2", "--samples", "3"], "--samples counts searched points"),
    (["--method", "simclr", "--set", "temperature=0.2", "--grid", "temperature=0.1,0.3"], "both fixed"),
    (["--method", "simsiam", "--grid", "temperature=0.1,0.3"], "temperature"),
    (["--config", "/nonexistent/sweep.yaml"], "no such file"),
])
def test_bad_sweeps_are_one_line_and_exit_2_before_ray(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        sweep.main(argv + ["--scale", "smoke", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out" / "tune").exists()


def test_a_yaml_file_with_an_unknown_key_or_bad_syntax_is_one_line(tmp_path, capsys):
    for text, message in (("method: simclr\nfoo: 1\n", "unknown key(s) ['foo']"),
                          ("method: simclr\ngrid: [1\n", "not valid YAML at line 3")):
        config = tmp_path / "sweep.yaml"
        config.write_text(text)
        with pytest.raises(SystemExit) as exit_:
            sweep.main(["--config", str(config)])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_the_readme_python_example_is_a_valid_study(monkeypatch):
    import studies.runner

    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(from ray import tune\nfrom studies.runner import run_study\n.*?)```", text,
                     re.S).group(1)
    seen = {}

    def checked(name, fixed, space, out, **options):
        seen.update(cells=check_space(fixed, space), options=options)
        return Path(out) / "results.parquet", Path(out) / "history.parquet"

    monkeypatch.setattr(studies.runner, "run_study", checked)
    exec(code, {})
    assert len(seen["cells"]) == 4 and seen["options"]["scheduler"] == "asha"


def test_a_small_sweep_killed_and_run_again_finishes_into_its_report(tmp_path, ray_head):
    """The command line end to end: TPE over the temperature, two seeds under each point, ASHA from epoch 1,
    SIGKILLed after its first finished trial and run again with the same command. The second session runs no
    finished trial again and its searcher is the first one's (ray #30861 dropped it on restore): every point runs
    on both seeds, the trials ASHA stopped are rows `stopped early at epoch k` with their last monitor score and
    history, the Optuna study in the folder holds each point's mean, and a point lost with the kill is marked
    failed there, not left running."""
    import optuna

    from studies.search import STORAGE_FILE, open_study

    out, log = tmp_path / "sweep", tmp_path / "trials.log"
    args = ["-m", "studies.sweep", "--method", "simclr", "--scale", "smoke", "--search",
            "temperature=loguniform:0.05:1", "--samples", "3", "--seeds", "2", "--scheduler", "asha",
            "--grace-epochs", "1", "--max-concurrent", "2", "--set", "epochs=4", "--set", "train_subset=256",
            "--set", "eval_subset=128", "--set", "test_subset=64", "--set", "batch_size=32", "--set",
            "linear_epochs=1", "--set", "validation_images=64", "--name", "small_search", "--out", str(out)]
    first = start(args, tmp_path / "first.txt", LAB_TRIAL_LOG=str(log), RAY_ADDRESS=ray_head.address)
    assert wait_for(lambda: log.exists() and any(e.startswith("done ") for e in log.read_text().splitlines()), 240)
    kill_session(first)
    events_before = log.read_text().splitlines()
    finished_before = {line.split()[1] for line in events_before if line.startswith("done ")}
    assert 1 <= len(finished_before) < 6, events_before

    proc = start(args, tmp_path / "console.txt", LAB_TRIAL_LOG=str(log), RAY_ADDRESS=ray_head.address)
    assert proc.wait(timeout=400) == 0, (tmp_path / "console.txt").read_text()[-3000:]
    console = (tmp_path / "console.txt").read_text()
    assert "resuming" in console
    assert "does not exist on storage anymore" not in console  # a stale snapshot's trial restores its newer one
    events_after = log.read_text().splitlines()[len(events_before):]
    restarted = [line for line in events_after if line.startswith("start ") and line.split()[1] in finished_before]
    assert not restarted, f"finished trials were run again: {restarted}"
    check_asha_study(out, console, points=3)
    study = open_study(out / STORAGE_FILE, "small_search", 0)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    page = (out / "report.html").read_text()
    assert "Score against each knob" in page and "Parallel coordinates" in page and "Best points" in page


def test_the_score_figure_of_a_search_over_one_knob_with_seeds_draws_every_trial():
    """One searched knob and seeds under it (bench/search_vs_grid.py's search): no other knob to colour by."""
    import polars as pl

    from analysis.reports.sweep import score_vs_knobs

    scores = pl.DataFrame({"temperature": [0.1, 0.1, 0.5, 0.5], "seed": [0, 1, 0, 1], "score": [70.0, 71.0, 65.0, 66.0],
                           "stopped_early": [False, True, True, True], "trial_id": ["a", "b", "c", "d"]})
    fig = score_vs_knobs(scores, ["temperature"], {"space": {"temperature": "loguniform(0.03, 1)", "seed": [0, 1]}})
    assert sorted(len(trace.y) for trace in fig.data) == [1, 3]
    assert {trace.marker.symbol for trace in fig.data} == {"circle", "circle-open"}
