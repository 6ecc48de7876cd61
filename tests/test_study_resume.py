"""Which checkpoint file `--resume` continues each trial from (study.prepare.resume_checkpoints)."""

from __future__ import annotations

import pytest
import torch

from ddgan.checkpoint import load_checkpoint, save_checkpoint
from ddgan.config import resolve_config
from ddgan.errors import CheckpointError
from ddgan.methods import build_method
from study.prepare import resume_checkpoints, saved_checkpoints

KEY = "ddgan-ns-T1-lr0.001-s0"


def _checkpoint(storage, key: str, index: int, step: int, content: bytes | None = None):
    """A file where Ray persists a trial's checkpoint: <storage>/train/<key>/checkpoint_<index>/ckpt_<step>.pt;
    a valid project checkpoint unless `content` is given."""
    path = storage / "train" / key / f"checkpoint_{index:06d}" / f"ckpt_{step:07d}.pt"
    path.parent.mkdir(parents=True)
    if content is None:
        cfg = resolve_config({"method": "ddgan", "model": {"preset": "tiny"}, "diffusion": {"T": 1},
                              "train": {"device": "cpu"}}, [])
        save_checkpoint(path, {"step": step, "config": cfg.to_dict(), **build_method(cfg, torch.device("cpu")).state_dict()})
    else:
        path.write_bytes(content)
    return path


def test_newest_checkpoint_by_step_not_by_name_order(tmp_path):
    paths = [_checkpoint(tmp_path, KEY, i, step) for i, step in enumerate([20, 100, 40])]
    _checkpoint(tmp_path, "other", 0, 20)
    assert saved_checkpoints(str(tmp_path), "train")[KEY] == [str(paths[1]), str(paths[2]), str(paths[0])]
    notes = []
    chosen = resume_checkpoints(str(tmp_path), "train", notes)
    assert chosen[KEY] == str(paths[1]) and load_checkpoint(chosen[KEY])["step"] == 100
    assert set(chosen) == {KEY, "other"} and notes == []


def test_a_newest_file_cut_short_falls_back_to_the_previous_one_with_a_note(tmp_path):
    """The kill that ended the previous session may land while Ray copies a checkpoint: the trial
    continues from the one before (those steps are redone) and the note names the skipped file."""
    good = _checkpoint(tmp_path, KEY, 0, 20)
    _checkpoint(tmp_path, KEY, 1, 40, good.read_bytes()[: good.stat().st_size // 2])
    notes = []
    assert resume_checkpoints(str(tmp_path), "train", notes) == {KEY: str(good)}
    assert len(notes) == 1 and KEY in notes[0] and str(good) in notes[0] and "ckpt_0000040.pt" in notes[0]
    assert "unreadable or corrupt" in notes[0]


def test_a_trial_none_of_whose_files_loads_is_refused_not_restarted(tmp_path):
    _checkpoint(tmp_path, KEY, 0, 20, b"\x00 not a checkpoint" * 20)
    _checkpoint(tmp_path, KEY, 1, 40, b"PK\x03\x04 cut" * 20)
    with pytest.raises(CheckpointError, match=r"--resume: checkpoint .*ckpt_0000040\.pt' is unreadable or corrupt"):
        resume_checkpoints(str(tmp_path), "train")


def test_remote_storage_takes_the_newest_file_unchecked(tmp_path):
    """A remote URI is listed through pyarrow; the trainer checks the file when it loads it."""
    _checkpoint(tmp_path, KEY, 0, 20)
    cut = _checkpoint(tmp_path, KEY, 1, 40, b"cut short")
    chosen = resume_checkpoints(f"file://{tmp_path}", "train")
    assert chosen == {KEY: f"file://{cut}"}
