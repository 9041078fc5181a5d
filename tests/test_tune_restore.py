"""A restored trial starts from the newest checkpoint in its folder (studies.runner.RestoreNewestCheckpoint):
Tune's snapshot can name a checkpoint its driver already deleted, when a study is killed between the two."""

from types import SimpleNamespace

import pyarrow.fs
import pytest
import torch
from ray.train._internal.checkpoint_manager import _TrainingResult
from ray.tune import Checkpoint

from lab.checkpoint import CHECKPOINT_FILE, load_ray_checkpoint, save_state_file
from studies.runner import RestoreNewestCheckpoint, run_trial


class _Restored:
    def restore(self, checkpoint_path):
        self.restored = checkpoint_path


class _Trainable(RestoreNewestCheckpoint, _Restored):
    def __init__(self, index: int):
        self._storage = SimpleNamespace(current_checkpoint_index=index)


def _trial_folder(tmp_path, *indices, partial=()):
    """A trial's folder with whole checkpoints at `indices`; at `partial`, one a killed upload left: empty, or
    its file cut short."""
    folder = tmp_path / "tune" / "ab12cd34"
    for index in indices:
        (folder / f"checkpoint_{index:06d}").mkdir(parents=True)
        torch.save({"epoch": index, "weights": torch.ones(256)}, folder / f"checkpoint_{index:06d}" / CHECKPOINT_FILE)
    for index, cut in partial:
        (folder / f"checkpoint_{index:06d}").mkdir(parents=True)
        if cut:
            whole = (folder / f"checkpoint_{min(indices):06d}" / CHECKPOINT_FILE).read_bytes()
            (folder / f"checkpoint_{index:06d}" / CHECKPOINT_FILE).write_bytes(whole[:len(whole) // 2])
    (folder / "result.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text("{}")
    return folder


def _named(folder, index, iteration):
    return _TrainingResult(checkpoint=Checkpoint(str(folder / f"checkpoint_{index:06d}"),
                                                 filesystem=pyarrow.fs.LocalFileSystem()),
                           metrics={"training_iteration": iteration, "score": 1.0})


@pytest.mark.parametrize("kept", [(1,), (0, 1), (1, 2)], ids=["named-gone", "named-kept", "two-newer"])
def test_a_snapshot_naming_an_older_checkpoint_restores_the_newest_with_its_iteration(tmp_path, capsys, kept):
    folder = _trial_folder(tmp_path, *kept)
    trainable = _Trainable(index=0)
    trainable.restore(_named(folder, 0, iteration=1))
    newest = max(kept)
    restored = trainable.restored
    assert restored.checkpoint.path == str(folder / f"checkpoint_{newest:06d}")
    assert restored.metrics == {"training_iteration": 1 + newest, "score": 1.0}
    assert trainable._storage.current_checkpoint_index == newest
    # the name Tune's manager holds exists again (empty where it was gone): its next registration deletes it
    assert (folder / "checkpoint_000000").is_dir()
    assert [p.name for p in (folder / "checkpoint_000000").iterdir()] == ([CHECKPOINT_FILE] if 0 in kept else [])
    line = capsys.readouterr().err
    assert f"restoring the newer checkpoint_{newest:06d}" in line and ("(gone)" in line) == (0 not in kept)


@pytest.mark.parametrize("kept", [(0,), ()], ids=["newest-named", "nothing-there"])
def test_a_snapshot_naming_the_newest_or_a_missing_folder_is_restored_as_tune_would(tmp_path, capsys, kept):
    folder = _trial_folder(tmp_path, *kept)
    named = _named(folder, 0, iteration=1)
    trainable = _Trainable(index=0)
    trainable.restore(named)
    assert trainable.restored is named and trainable._storage.current_checkpoint_index == 0
    assert (folder / "checkpoint_000000").exists() == bool(kept)  # nothing made up: Tune says it is gone
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("cut", [False, True], ids=["empty", "truncated"])
def test_a_newer_checkpoint_a_killed_upload_left_unwhole_is_passed_over(tmp_path, capsys, cut):
    folder = _trial_folder(tmp_path, 1, partial=[(2, cut)])
    trainable = _Trainable(index=0)
    trainable.restore(_named(folder, 0, iteration=1))
    assert trainable.restored.checkpoint.path == str(folder / "checkpoint_000001")
    assert trainable.restored.metrics["training_iteration"] == 2 and trainable._storage.current_checkpoint_index == 1
    assert "restoring the newer checkpoint_000001" in capsys.readouterr().err

    named = _named(_trial_folder(tmp_path / "only", 0, partial=[(1, cut)]), 0, iteration=1)
    trainable.restore(named)
    assert trainable.restored is named  # the named one is whole: Tune registered it after its upload


def test_the_study_trainable_has_the_mixin():
    from ray import tune
    from ray.tune.trainable.function_trainable import wrap_function

    wrapped = wrap_function(tune.with_parameters(run_trial, final_dir=None))
    assert issubclass(wrapped, RestoreNewestCheckpoint)


def test_a_restored_checkpoint_without_the_labs_file_says_so_and_the_run_starts_afresh(tmp_path, capsys):
    from lab.checkpoint import LAB_STATE_KEYS

    (tmp_path / "empty").mkdir()
    assert load_ray_checkpoint(Checkpoint.from_directory(str(tmp_path / "empty"))) is None
    assert f"{tmp_path / 'empty'} holds no {CHECKPOINT_FILE}" in capsys.readouterr().err
    (tmp_path / "whole").mkdir()
    state = {key: 1 for key in LAB_STATE_KEYS}
    save_state_file(state, tmp_path / "whole" / CHECKPOINT_FILE)
    assert load_ray_checkpoint(Checkpoint.from_directory(str(tmp_path / "whole"))) == state
    assert load_ray_checkpoint(None) is None and capsys.readouterr().err == ""
