"""core/training/best.py: the adapter is the best evaluation's weights, kept on disk through a kill."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qdtool.core import training
from qdtool.core.rundir import RunDir
from qdtool.core.training import best, decode, loop
from qdtool.errors import TrainingError

from train_support import cli_args, example_data, make_config, spawn, wait_for

# The tiny model's eval loss falls while the learning rate warms up, then rises at the peak (steps 3-6).
RISING = dict(lr=0.05, warmup_ratio=0.5, scheduler="linear", eval_steps=1)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return example_data(tmp_path_factory.mktemp("data"))


def _snapshots(monkeypatch) -> dict[int, dict[str, torch.Tensor]]:
    """The LoRA weights (named as the adapter file names them) at each evaluation of the next run, by step."""
    from peft import get_peft_model_state_dict

    seen: dict[int, dict[str, torch.Tensor]] = {}
    real = loop.evaluate

    def evaluate(run, step):
        seen[step] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(run.model).items()}
        return real(run, step)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    return seen


def _eval_rows(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]


def _assert_same_weights(adapter: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(adapter) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(adapter[name], value, rtol=0, atol=0, msg=name)


def test_the_adapter_holds_the_weights_of_the_lowest_eval_loss(tiny_model_dir, data_file, tmp_path, monkeypatch):
    seen = _snapshots(monkeypatch)
    out = tmp_path / "run"
    result = training.train(make_config(tiny_model_dir, data_file, out, **RISING))
    losses = {r["step"]: r["eval_loss"] for r in _eval_rows(out)}
    lowest = min(losses, key=lambda s: (losses[s], s))
    assert sorted(losses) == list(range(7)) and 0 < lowest < 6  # the curve rises at the end: the final weights are not the best
    assert (result.selected_by, result.selected_step, result.selected_score) == ("eval_loss", lowest, losses[lowest])
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    _assert_same_weights(adapter, seen[lowest])
    assert any(not torch.equal(adapter[name], seen[6][name]) for name in adapter)  # not the final weights
    summary = json.loads((out / "run_summary.json").read_text())
    assert (summary["selected_by"], summary["selected_step"], summary["selected_score"]) == ("eval_loss", lowest, losses[lowest])
    assert summary["best_eval_sari"] is not None and summary["final_eval_sari"] == _eval_rows(out)[-1]["eval_sari"]
    card = (out / "adapter" / "README.md").read_text()
    assert f"| weights | of step {lowest}, the best evaluation by eval_loss ({losses[lowest]:.4f}) |" in card
    assert not (out / "checkpoints").exists() and not (out / "best").exists()  # gone once the adapter is written


def test_select_by_sari_keeps_the_step_with_the_highest_eval_sari_and_a_tie_keeps_the_earlier(tiny_model_dir, data_file, tmp_path,
                                                                                              monkeypatch):
    scripted = iter([0.20, 0.35, 0.50, 0.30, 0.50, 0.40, 0.45])  # eval SARI at steps 0-6 (the tiny model's own is flat)
    monkeypatch.setattr(decode, "eval_sari", lambda run, step: next(scripted))
    seen = _snapshots(monkeypatch)
    out = tmp_path / "run"
    result = training.train(make_config(tiny_model_dir, data_file, out, select_by="sari", **RISING))
    sari = {r["step"]: r["eval_sari"] for r in _eval_rows(out)}
    assert sari == dict(enumerate([0.20, 0.35, 0.50, 0.30, 0.50, 0.40, 0.45]))
    assert (result.selected_by, result.selected_step, result.selected_score) == ("sari", 2, 0.50)
    assert (result.best_eval_sari, result.final_eval_sari) == (0.50, 0.45)
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    _assert_same_weights(adapter, seen[2])
    assert any(not torch.equal(adapter[name], seen[4][name]) for name in adapter)  # step 4 ties: the earlier step is kept


def test_the_best_weights_survive_a_kill_9_and_the_resumed_run_writes_them(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    args = cli_args(tiny_model_dir, data_file, out, steps=6, **RISING)
    proc = spawn(args, slow=True)
    wait_for(out / "checkpoints" / "step-0000004" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "run_summary.json").exists()  # it really died mid-run
    state = json.loads((out / "checkpoints" / "step-0000004" / "trainer_state.json").read_text())
    kept = state["best_step"]
    assert [p.name for p in (out / "best").iterdir()] == [f"step-{kept:07d}"]
    before_kill = load_file(str(out / "best" / f"step-{kept:07d}" / "weights.safetensors"))

    resumed = spawn(args, slow=False)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "resuming from" in stderr
    rows = _eval_rows(out)
    losses = {r["step"]: r["eval_loss"] for r in rows}
    assert sorted(losses) == list(range(7))  # no evaluation lost, none twice
    assert min(losses, key=lambda s: (losses[s], s)) == kept < 4  # the best came before the checkpoint the run resumed from
    summary = json.loads((out / "run_summary.json").read_text())
    assert (summary["selected_step"], summary["selected_score"]) == (kept, losses[kept]) == (kept, state["best_score"])
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    _assert_same_weights(adapter, {name.replace(".default", ""): value for name, value in before_kill.items()})


def _fake_checkpoint(out: RunDir, step: int, best_step: int | None) -> None:
    path = out.checkpoints / f"step-{step:07d}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "best_step": best_step}))


def test_best_weights_are_kept_while_a_checkpoint_or_the_live_run_names_them(tmp_path):
    out = RunDir(tmp_path / "run")
    for step in (2, 3, 5, 7):
        best.path_of(out, step).mkdir(parents=True)
        save_file({"w": torch.full((2,), float(step))}, str(best.path_of(out, step) / "weights.safetensors"))
    (out.best / ".tmp-step-0000008-123-abcdef").mkdir()  # a killed write
    _fake_checkpoint(out, 4, best_step=2)
    _fake_checkpoint(out, 6, best_step=5)
    best.prune(out, 7)
    assert sorted(p.name for p in out.best.iterdir()) == ["step-0000002", "step-0000005", "step-0000007"]
    shutil.rmtree(out.checkpoints / "step-0000004")  # rotated out
    best.prune(out, 5)
    assert sorted(p.name for p in out.best.iterdir()) == ["step-0000005"]
    assert best.load(out, 5)["w"].tolist() == [5.0, 5.0]
    best.check_kept(out, 5)
    best.check_kept(out, None)  # no evaluation yet: nothing to find
    with pytest.raises(TrainingError, match=r"step-0000007 is missing: it held the weights of the best evaluation \(step 7\)"):
        best.check_kept(out, 7)
    (best.path_of(out, 5) / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(TrainingError, match=r"weights of the best evaluation \(step 5\), is missing or damaged"):
        best.load(out, 5)


def test_which_is_better():
    assert best.is_better("eval_loss", 1.0, 2.0) and not best.is_better("eval_loss", 2.0, 1.0)
    assert best.is_better("sari", 0.6, 0.5) and not best.is_better("sari", 0.5, 0.6)
    assert not best.is_better("sari", 0.5, 0.5) and not best.is_better("eval_loss", 1.0, 1.0)  # a tie keeps the earlier step
    assert best.is_better("sari", 0.1, None) and not best.is_better("sari", None, None)
