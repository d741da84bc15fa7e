"""core/training/loop.py: checkpoints, and a full disk while writing one."""

from __future__ import annotations

from pathlib import Path

import pytest

from qdtool.core import training
from qdtool.errors import TrainingError

from train_support import example_data, make_config


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return example_data(tmp_path_factory.mktemp("data"))


def test_disk_full_during_a_checkpoint_keeps_the_last_good_one_and_the_rerun_resumes(tiny_model_dir, data_file, tmp_path, monkeypatch):
    import errno

    out = tmp_path / "run"
    config = make_config(tiny_model_dir, data_file, out, save_steps=2)
    real = Path.write_bytes

    def full(self, data):
        if self.parent.name.startswith(".tmp-step-0000004") and self.name == "optimizer.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", full)
        with pytest.raises(TrainingError) as caught:
            training.train(config)
    message = " ".join(str(caught.value).split())
    assert "no space left on the device holding" in message and "it needs about" in message
    assert f"The step-4 checkpoint was not saved; {out / 'checkpoints' / 'step-0000002'} is kept" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]  # the partial one is gone
    result = training.train(config)  # room again: the same command resumes from the kept checkpoint
    assert result.resumed_from == str(out / "checkpoints" / "step-0000002") and result.steps == 6
