"""core/training.py: a run directory that is complete, reproducible, resumable and safe."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import SLOW_TRAIN
from qdtool.config import TrainConfig, load_train_config
from qdtool.core import training
from qdtool.errors import ConfigError, QdtoolError, TrainingError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    lines = (EXAMPLES / "strategyqa_train.jsonl").read_text(encoding="utf-8").splitlines()[:30]
    lines += (EXAMPLES / "ko_samples.jsonl").read_text(encoding="utf-8").splitlines()[:10]
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_config(model_dir: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), data=str(data), output_dir=str(out), max_steps=6, batch_tokens=1024,
                  max_seq_len=512, eval_steps=3, save_steps=100, lr=3e-3, report_to="none", eval_split=0.2)
    return load_train_config(overrides={**values, **overrides})


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_run_dir_is_complete_and_eval_loss_falls(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    result = training.train(make_config(tiny_model_dir, data_file, out))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "tokenizer_config.json").is_file()
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = load_train_config(out / "run_config.yaml")
    assert saved.model == str(tiny_model_dir) and saved.max_seq_len == 512
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 3, 6]
    step_row = next(r for r in rows if "loss" in r)
    assert {"lr", "grad_norm", "supervised_tokens_per_s", "peak_memory_gb", "epoch"} <= set(step_row)
    assert result.final_eval_loss < result.first_eval_loss
    assert result.train_records == 32 and result.eval_records == 8
    assert not (out / "checkpoints").exists()
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["steps"] == 6 and summary["supervised_tokens"] == result.supervised_tokens > 0


def test_same_seed_same_loss_curve(tiny_model_dir, data_file, tmp_path):
    training.train(make_config(tiny_model_dir, data_file, tmp_path / "a"))
    training.train(make_config(tiny_model_dir, data_file, tmp_path / "b"))
    training.train(make_config(tiny_model_dir, data_file, tmp_path / "c", seed=7))
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "a")), torch.tensor(losses(tmp_path / "b")), rtol=0, atol=1e-6)
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


def test_a_finished_run_is_not_redone_and_a_different_one_is_refused(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    training.train(make_config(tiny_model_dir, data_file, out, max_steps=2))
    again = training.train(make_config(tiny_model_dir, data_file, out, max_steps=2))
    assert again.already_complete
    with pytest.raises(ConfigError, match=r"different configuration \(differs in: lora_r, lr\)"):
        training.train(make_config(tiny_model_dir, data_file, out, max_steps=2, lr=1e-4, lora_r=4))
    replaced = training.train(make_config(tiny_model_dir, data_file, out, max_steps=2, lr=1e-4), overwrite=True)
    assert not replaced.already_complete and load_train_config(out / "run_config.yaml").lr == 1e-4
    with pytest.raises(ConfigError, match="--resume never was given"):
        training.train(make_config(tiny_model_dir, data_file, out, max_steps=2, lr=1e-4), resume="never")
    stranger = tmp_path / "not-a-run"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # never deleted, even with --overwrite
        with pytest.raises(ConfigError, match="holds no qdtool run"):
            training.train(make_config(tiny_model_dir, data_file, stranger), overwrite=overwrite)
    assert (stranger / "notes.txt").read_text() == "mine"


def test_nan_loss_stops_with_the_step(tiny_model_dir, data_file, tmp_path, monkeypatch):
    real = training.answer_loss_sum

    def poisoned(model, batch):
        total, count = real(model, batch)
        return total * float("nan"), count

    monkeypatch.setattr(training, "answer_loss_sum", poisoned)
    with pytest.raises(TrainingError, match=r"the loss became nan at step 1\. Likely causes: a learning rate too high"):
        training.train(make_config(tiny_model_dir, data_file, tmp_path / "run"))


def test_cpu_refuses_quantization_before_loading(tiny_model_dir, data_file, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for option in ({"quantization": "4bit"}, {"quantization": "8bit"}, {"optimizer": "paged_adamw_8bit"}):
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            training.train(make_config(tiny_model_dir, data_file, tmp_path / "q", **option))
    assert not (tmp_path / "q" / "metrics.jsonl").exists()


def test_a_failing_tracker_never_kills_training(tiny_model_dir, data_file, tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    result = training.train(make_config(tiny_model_dir, data_file, tmp_path / "run", max_steps=2, report_to="wandb"))
    assert result.steps == 2
    assert any("wandb could not start" in w for w in result.warnings)


def _cli_args(model_dir, data, out, steps=10):
    return ["train", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-steps", str(steps),
            "--batch-tokens", "1024", "--max-seq-len", "512", "--save-steps", "2", "--eval-steps", "100", "--lr", "3e-3",
            "--report-to", "none", "--eval-split", "0.2"]


def _spawn(args, slow: bool):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code = SLOW_TRAIN if slow else "import sys\nfrom qdtool.cli.app import app\napp(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_kill_9_then_resume_continues_the_same_curve(tiny_model_dir, data_file, tmp_path):
    reference = tmp_path / "reference"
    proc = _spawn(_cli_args(tiny_model_dir, data_file, reference), slow=False)
    assert proc.wait(timeout=300) == 0, proc.communicate()

    out = tmp_path / "killed"
    proc = _spawn(_cli_args(tiny_model_dir, data_file, out), slow=True)
    _wait_for(out / "checkpoints" / "step-0000004" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "run_summary.json").exists()  # it really died mid-run
    assert max(json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()) >= 4

    resumed = _spawn(_cli_args(tiny_model_dir, data_file, out), slow=False)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "resuming from" in stderr
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(l)]
    assert steps == list(range(1, 11))  # no step lost, none twice
    torch.testing.assert_close(torch.tensor(losses(out)), torch.tensor(losses(reference)), rtol=0, atol=1e-5)


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    proc = _spawn(_cli_args(tiny_model_dir, data_file, out, steps=50), slow=True)
    _wait_for(out / "metrics.jsonl", proc)
    while "loss" not in (out / "metrics.jsonl").read_text():
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "SIGTERM received: checkpoint saved at step" in stderr
    assert f"Resume with: qdtool train --config {out / 'run_config.yaml'}" in " ".join(stderr.split())
    state = json.loads(next((out / "checkpoints").glob("step-*/trainer_state.json")).read_text())
    assert 1 <= state["step"] < 50


def test_grad_accumulation_equals_one_big_batch(tiny_tokenizer):
    """Two micro-batches (grad_accum 2) give the same update as one micro-batch holding both."""
    import copy

    from conftest import build_tiny_model
    from qdtool.core.batching import pack
    from qdtool.core.hardware import Device
    from qdtool.core.lora import add_lora
    from qdtool.core.prompts import encode_sample

    records = [json.loads(line) for line in (EXAMPLES / "strategyqa_train.jsonl").read_text().splitlines()[:4]]
    samples = [encode_sample(tiny_tokenizer, r["question"], r["sub_questions"]) for r in records]
    config = TrainConfig(lora_dropout=0.0, max_grad_norm=0.0, lora_r=4)
    torch.manual_seed(0)
    base = add_lora(build_tiny_model(len(tiny_tokenizer)).float(), config)
    for p in base.parameters():  # make LoRA B non-zero so every LoRA weight gets a gradient
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    updated = []
    for micro in ([pack(samples[:2], 10_000)[0], pack(samples[2:], 10_000)[0]], [pack(samples, 10_000)[0]]):
        model = copy.deepcopy(base).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        training._train_step(model, optimizer, scheduler, None, None, micro, config, Device("cpu", "fp32", "CPU"), 0)
        updated.append(torch.cat([p.detach().flatten() for p in params]))
    torch.testing.assert_close(updated[0], updated[1], rtol=1e-5, atol=1e-6)
    assert not torch.equal(updated[0], torch.cat([p.detach().flatten() for p in base.parameters() if p.requires_grad]))


def test_one_training_per_run_directory(tiny_model_dir, data_file, tmp_path):
    import fcntl

    out = tmp_path / "run"
    training.train(make_config(tiny_model_dir, data_file, out, max_steps=1))
    with (out / ".lock").open("w") as held:  # what a running `qdtool train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for steps, overwrite in ((1, False), (2, True)):
            with pytest.raises(ConfigError, match="another qdtool train is running"):
                training.train(make_config(tiny_model_dir, data_file, out, max_steps=steps), overwrite=overwrite)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()  # nothing was deleted
    training.train(make_config(tiny_model_dir, data_file, out, max_steps=2), overwrite=True)  # released: fine


def test_fsdp_in_one_process_warns_on_cpu_and_stops_on_a_gpu(tiny_model_dir, data_file, tmp_path, monkeypatch):
    result = training.train(make_config(tiny_model_dir, data_file, tmp_path / "run", max_steps=1, sharding="fsdp"))
    assert result.steps == 1
    assert any("sharding fsdp needs several processes" in w for w in result.warnings)
    for bad, reason in (({"quantization": "4bit"}, "quantization 4bit is not supported with it"), ({"precision": "fp16"}, "not fp16"),
                        ({"optimizer": "paged_adamw_8bit"}, "not paged_adamw_8bit")):
        with pytest.raises(ConfigError, match=reason):
            make_config(tiny_model_dir, data_file, tmp_path / "bad", sharding="fsdp", **bad)
    # on a GPU one process would hold the whole model FSDP was meant to split: stop before loading it
    from qdtool.core import hardware, modeling

    monkeypatch.setattr(hardware, "select_device", lambda config: hardware.Device("cuda", "bf16", "Fake GPU"))
    monkeypatch.setattr(modeling, "load_base_model", lambda *a, **k: pytest.fail("the model must not load"))
    with pytest.raises(ConfigError, match="launch with torchrun --nproc_per_node N"):
        training.train(make_config(tiny_model_dir, data_file, tmp_path / "gpu", sharding="fsdp"))


def test_a_checkpoint_resumes_only_as_it_was_written(tiny_model_dir, data_file, tmp_path, monkeypatch):
    """The batch stream (micro-batches per step) and the optimizer state's layout depend on the number
    of processes and on FSDP: a checkpoint written otherwise is refused, with what to do."""
    out = tmp_path / "run"
    real = training._train_step

    def stop_after_two(*args, **kwargs):
        row = real(*args, **kwargs)
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop saves a checkpoint at the end of this step
        return row

    monkeypatch.setattr(training, "_train_step", stop_after_two)
    with pytest.raises(training.TrainingInterrupted):
        training.train(make_config(tiny_model_dir, data_file, out))
    monkeypatch.setattr(training, "_train_step", real)
    state_file = out / "checkpoints" / "step-0000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert (state["processes"], state["sharded"]) == (1, False)
    state_file.write_text(json.dumps({**state, "processes": 2, "sharded": True}))
    with pytest.raises(ConfigError, match="written by 2 processes with FSDP; this run has 1 process. Resume it as it was written"):
        training.train(make_config(tiny_model_dir, data_file, out))
    state_file.write_text(json.dumps(state))
    assert training.train(make_config(tiny_model_dir, data_file, out)).resumed_from == str(state_file.parent)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_lr_schedule_warms_up_from_above_zero_and_decays_as_named(kind):
    """Against a direct computation: warm-up step k at (k + 1) / (w + 1) of the peak, then the decay."""
    import math

    from qdtool.core.training.optim import build_scheduler

    config = TrainConfig(lr=1e-3, warmup_ratio=0.1, scheduler=kind)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, 30)  # 3 warm-up steps, 27 of decay
    seen = []
    for _ in range(30):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    decay = {"cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)), "linear": lambda p: 1 - p, "constant": lambda p: 1.0}[kind]
    want = [1e-3 * (k + 1) / 4 for k in range(3)] + [1e-3 * decay((k - 3) / 27) for k in range(3, 30)]
    assert seen == pytest.approx(want)
    assert min(seen) > 0  # no step is wasted at lr 0


def _stop_after(monkeypatch, step: int) -> None:
    """SIGTERM at the end of `step`: the loop saves a checkpoint there and stops."""
    real = training._train_step

    def stopping(*args, **kwargs):
        row = real(*args, **kwargs)
        if row["step"] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return row

    monkeypatch.setattr(training, "_train_step", stopping)


def test_resume_refuses_changed_data_and_never_runs_a_planted_pickle(tiny_model_dir, data_file, tmp_path, monkeypatch):
    from qdtool.core import modeling

    data = tmp_path / "train.jsonl"
    data.write_bytes(data_file.read_bytes())
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _stop_after(patch, 2)
        with pytest.raises(training.TrainingInterrupted):
            training.train(make_config(tiny_model_dir, data, out))
    step_2 = out / "checkpoints" / "step-0000002"
    fingerprint = json.loads((step_2 / "trainer_state.json").read_text())["data"]
    assert fingerprint["train"][0]["path"] == str(data) and fingerprint["train"][0]["size"] == data.stat().st_size

    original = data.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    data.write_text("".join(lines[1:] + lines[:1]), encoding="utf-8")  # same records, same size, other order
    with monkeypatch.context() as patch:
        patch.setattr(modeling, "load_base_model", lambda *a, **k: pytest.fail("the model must not load"))
        with pytest.raises(TrainingError, match=rf"{data} \(train data\) changed since {step_2} was written.*pass --overwrite"):
            training.train(make_config(tiny_model_dir, data, out))

    data.write_bytes(original)
    marker = tmp_path / "code-ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for part in ("optimizer", "scheduler", "rng"):  # what a shared run dir could hold under format 1's names
        torch.save(Planted(), step_2 / f"{part}.pt")
    result = training.train(make_config(tiny_model_dir, data, out))
    assert result.resumed_from == str(step_2) and result.steps == 6
    assert not marker.exists()


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


def test_a_full_disk_while_writing_the_adapter_leaves_no_half_adapter(tiny_model_dir, data_file, tmp_path, monkeypatch):
    import errno

    from transformers import PreTrainedTokenizerBase

    def full(self, *args, **kwargs):  # the adapter weights are written by then: only the tokenizer is missing
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    config = make_config(tiny_model_dir, data_file, out, max_steps=4, save_steps=2)
    with monkeypatch.context() as patch:
        patch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
        with pytest.raises(TrainingError, match=r"no space left on the device holding .*adapter.*The adapter was not written; "
                                                 r"once there is room, the same command resumes from .*step-0000002"):
            training.train(config)
    assert sorted(p.name for p in out.iterdir() if "adapter" in p.name) == []  # neither a half adapter nor its temp dir
    assert not (out / "run_summary.json").exists()
    result = training.train(config)
    assert result.resumed_from == str(out / "checkpoints" / "step-0000002")
    assert (out / "adapter" / "tokenizer_config.json").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()


def test_a_run_whose_model_failed_to_load_does_not_block_its_directory(tiny_model_dir, data_file, tmp_path):
    import shutil

    no_weights = tmp_path / "no-weights"  # config and tokenizer load; the weights do not
    shutil.copytree(tiny_model_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    out = tmp_path / "run"
    for broken in (no_weights, tmp_path / "nope"):  # a model dir without weights; a mistyped path
        with pytest.raises(QdtoolError):
            training.train(make_config(broken, data_file, out, max_steps=2))
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no run_config.yaml left to claim the directory
    result = training.train(make_config(tiny_model_dir, data_file, out, max_steps=2))  # no --overwrite
    assert result.steps == 2 and not result.already_complete
    assert load_train_config(out / "run_config.yaml").model == str(tiny_model_dir)


def test_a_run_that_stopped_before_its_first_checkpoint_does_not_block_its_directory(tiny_model_dir, data_file, tmp_path, monkeypatch):
    real = training.answer_loss_sum
    out = tmp_path / "run"
    with monkeypatch.context() as patch:  # too high a learning rate, say: the loss blows up at step 1
        patch.setattr(training, "answer_loss_sum", lambda model, batch: (real(model, batch)[0] * float("inf"), 1))
        with pytest.raises(TrainingError, match="the loss became"):
            training.train(make_config(tiny_model_dir, data_file, out, lr=1.0))
    assert load_train_config(out / "run_config.yaml").lr == 1.0 and not (out / "checkpoints").exists()
    result = training.train(make_config(tiny_model_dir, data_file, out, max_steps=2))  # other settings, no --overwrite
    assert result.steps == 2 and load_train_config(out / "run_config.yaml").lr == 3e-3
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [0, 1, 2, 2]

    with monkeypatch.context() as patch:  # a run with a checkpoint to resume still holds its directory
        _stop_after(patch, 1)
        with pytest.raises(training.TrainingInterrupted):
            training.train(make_config(tiny_model_dir, data_file, tmp_path / "kept"))
    with pytest.raises(ConfigError, match=r"different configuration \(differs in: lr\)"):
        training.train(make_config(tiny_model_dir, data_file, tmp_path / "kept", lr=1e-4))


def test_the_adapter_has_our_card_and_a_portable_base_model(tiny_model_dir, data_file, tmp_path, monkeypatch):
    """A hub model is loaded from a cache directory; the adapter must name the hub id, not that directory."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qdtool.core import modeling

    real_model, real_tokenizer = modeling.load_model, modeling.load_tokenizer
    monkeypatch.setattr(modeling, "load_model", lambda spec, **kw: real_model(str(tiny_model_dir), **kw))
    monkeypatch.setattr(modeling, "load_tokenizer", lambda spec, **kw: real_tokenizer(str(tiny_model_dir), **kw))
    out = tmp_path / "run"
    result = training.train(make_config("someone/tiny-model", data_file, out, max_steps=4))

    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "someone/tiny-model"
    card = (out / "adapter" / "README.md").read_text()
    assert "More Information Needed" not in card
    assert card.startswith("---\nlibrary_name: peft\nbase_model: someone/tiny-model\n")
    assert "| base model | `someone/tiny-model` (Hugging Face hub) |" in card
    sha = hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert f"| training data | `train.jsonl`: 40 records (sha256 {sha[:12]}) |" in card
    assert "| eval data | 8 records held out from the training data (eval_split 0.2, at most 200, seed 42) |" in card
    assert "| samples | 32 train / 8 eval; 0 dropped and 0 truncated at max_seq_len 512 |" in card
    assert "| steps | 4 optimizer steps (max_steps 4) |" in card
    assert (f"| eval loss (answer tokens) | {result.first_eval_loss:.4f} at start → {result.final_eval_loss:.4f} at end "
            f"(best {result.best_eval_loss:.4f}) |") in card
    assert "| LoRA | r 16, alpha 32, dropout 0.05, on all-linear |" in card
    assert "peak lr 0.003, cosine after 3% warm-up" in card
    assert f'qdtool decompose --model {out} "' in card and f"qdtool merge {out}" in card

    # the adapter still loads onto its base (qdtool takes the base from run_config.yaml, never from here)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    loaded = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert loaded.peft_config["default"].base_model_name_or_path == "someone/tiny-model"
    assert any(name.endswith("lora_A.default.weight") for name, _ in loaded.named_parameters())


def test_the_card_names_a_local_base_as_given_and_lists_every_data_file(tiny_model_dir, data_file, tmp_path, monkeypatch):
    from qdtool.core.cards import DataFile, adapter_card

    monkeypatch.chdir(tiny_model_dir.parent)
    config = make_config(Path(tiny_model_dir.name), data_file, tmp_path / "run", use_rslora=True, lora_target=["q_proj", "v_proj"])
    config = config.model_copy(update={"eval_data": tmp_path / "val.jsonl"})
    result = training.TrainResult(str(tmp_path / "run"), "", 6, 6, 30, 5, 1, 2, first_eval_loss=2.5, final_eval_loss=1.25,
                                  best_eval_loss=1.0, device="cpu", precision="bf16")
    files = [DataFile("train", data_file, 31, "a" * 64), DataFile("eval", tmp_path / "val.jsonl", 5, "b" * 64)]
    card = adapter_card(tmp_path / "run", config, result, files)
    assert card.startswith("---\nlibrary_name: peft\ntags:")  # no hub id to name as base_model
    assert f"| base model | `{tiny_model_dir.name}` (a local directory) |" in card
    assert "| eval data | `val.jsonl`: 5 records (sha256 bbbbbbbbbbbb) |" in card
    assert "| LoRA | r 16, alpha 32, dropout 0.05, on q_proj, v_proj, rsLoRA |" in card
    assert "| eval loss (answer tokens) | 2.5000 at start → 1.2500 at end (best 1.0000) |" in card
    assert "| precision | bf16 on cpu, quantization none |" in card
