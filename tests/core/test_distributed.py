"""`qdtool train` under torchrun: 2 CPU processes (gloo) train one adapter, written once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import SLOW_TRAIN

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def _args(model_dir: Path, out: Path, grad_accum: int) -> list[str]:
    return ["train", "--model", str(model_dir), "--data", str(EXAMPLES / "sample_train.json"), "--output-dir", str(out),
            "--max-steps", "3", "--batch-tokens", "512", "--max-seq-len", "512", "--report-to", "none", "--eval-split", "0.2",
            "--lr", "1e-3", "--precision", "fp32", "--lora-dropout", "0", "--grad-accum", str(grad_accum)]


def test_torchrun_two_processes_match_a_single_process_run(tiny_model_dir, tmp_path):
    """2 processes x grad_accum 1 see the same micro-batches per step as 1 process x grad_accum 2,
    so (without dropout) they must learn the same adapter and log the same losses."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    single = tmp_path / "single"
    done = subprocess.run([sys.executable, "-m", "qdtool", *_args(tiny_model_dir, single, 2)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "qdtool",
           *_args(tiny_model_dir, ddp, 1)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert done.stdout.count("training summary") == 1  # one process reports

    a, b = load_file(str(single / "adapter" / "adapter_model.safetensors")), load_file(str(ddp / "adapter" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]  # written once, not per process
    for key in ("loss", "eval_loss"):  # finite on both ranks: these are sums over them
        got = [r[key] for r in rows if key in r]
        want = [r[key] for r in reference if key in r]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)
    assert not (ddp / "checkpoints").exists()


# --- FSDP (sharding: fsdp) ---------------------------------------------------------------------

def _fsdp_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    # 380-token rows over 256-token samples give steps of 1 to 3 micro-batches: some steps leave
    # the second process without one (it must still run a weight-0 pass). The split depends on the
    # fixture tokenizer, trained on examples/data: when that data changes, check the steps still vary.
    return ["train", "--model", str(model_dir), "--data", str(EXAMPLES / "sample_train.json"), "--output-dir", str(out),
            "--batch-tokens", "380", "--max-seq-len", "256", "--report-to", "none", "--eval-split", "0.2", "--epochs", "2",
            "--lr", "1e-3", "--precision", "fp32", "--lora-dropout", "0", *extra]


def _torchrun(script: list[str], env: dict[str, str], **kwargs):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _metric(path: Path, key: str) -> list[float]:
    return [row[key] for row in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if key in row]


def _assert_same_run(got: Path, want: Path) -> None:
    a = load_file(str(want / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(got / "adapter" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    for key in ("loss", "grad_norm", "eval_loss"):  # grad_norm: a gradient off by the process count would show here
        torch.testing.assert_close(torch.tensor(_metric(got, key)), torch.tensor(_metric(want, key)), rtol=1e-4, atol=1e-5)


def _single_process_reference(model_dir: Path, out: Path, env: dict[str, str], *extra: str) -> None:
    """What two processes should match: one process taking both micro-batches of each step."""
    done = subprocess.run([sys.executable, "-m", "qdtool", *_fsdp_args(model_dir, out, "--grad-accum", "2", *extra)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_fsdp_two_processes_match_a_single_process_run(tiny_model_dir, tmp_path):
    """With gradient checkpointing, as configs/fsdp.yaml trains (the resume test below runs without)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    single = tmp_path / "single"
    _single_process_reference(tiny_model_dir, single, env, "--gradient-checkpointing")

    fsdp = tmp_path / "fsdp"
    proc = _torchrun(["-m", "qdtool", *_fsdp_args(tiny_model_dir, fsdp, "--sharding", "fsdp", "--gradient-checkpointing")], env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, (stdout[-2000:], stderr[-4000:])
    assert "FSDP: base weights sharded over 2 processes" in stderr
    assert stdout.count("training summary") == 1
    assert 1 in _metric(fsdp, "samples")  # a step with one micro-batch: the second process ran a weight-0 pass
    _assert_same_run(fsdp, single)


def _kill_after_step_4_then_resume(args: list[str], out: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """Run `qdtool train ARGS` under torchrun (2 processes, slowed down), SIGKILL every process once
    the step-4 checkpoint exists, then run the same command again to completion."""
    runner = tmp_path / "slow_train.py"
    runner.write_text(SLOW_TRAIN)
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = _torchrun([str(runner), *args], {**env, "PID_DIR": str(pids)})
    checkpoint = out / "checkpoints" / "step-0000004" / "trainer_state.json"
    deadline = time.time() + 240
    while not checkpoint.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the step-4 checkpoint never appeared"
        time.sleep(0.05)
    for pid in [int(p.read_text()) for p in pids.iterdir()] + [proc.pid]:  # both workers, then torchrun
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not (out / "run_summary.json").exists()

    resumed = _torchrun(["-m", "qdtool", *args], env)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, (stdout[-2000:], stderr[-4000:])
    assert "resuming from" in stderr


def test_fsdp_resume_after_kill_9_continues_the_same_curve(tiny_tokenizer, tmp_path):
    """A checkpoint written under FSDP (adapter and optimizer gathered whole) resumes under FSDP:
    same losses, gradient norms and adapter as one uninterrupted process. The model ties its LM
    head to the embeddings, as Gemma does."""
    from conftest import build_tiny_model

    model_dir = tmp_path / "tied-model"
    build_tiny_model(len(tiny_tokenizer), seed=1, tied=True).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    _single_process_reference(model_dir, reference, env)

    out = tmp_path / "fsdp"
    _kill_after_step_4_then_resume(_fsdp_args(model_dir, out, "--sharding", "fsdp", "--save-steps", "2"), out, tmp_path, env)
    assert _metric(out, "step") == _metric(reference, "step")  # no step lost, none twice (eval rows included)
    _assert_same_run(out, reference)


def test_resume_gives_each_process_back_its_own_dropout_masks(tiny_model_dir, tmp_path):
    """With LoRA dropout, each process draws its own masks (seed + rank). A resumed two-process run
    continues the same curve only if every process gets its own RNG state back, not the first's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    args = lambda out: _fsdp_args(tiny_model_dir, out, "--lora-dropout", "0.3", "--save-steps", "2")  # noqa: E731
    proc = _torchrun(["-m", "qdtool", *args(reference)], env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]

    out = tmp_path / "resumed"
    _kill_after_step_4_then_resume(args(out), out, tmp_path, env)
    assert _metric(out, "step") == _metric(reference, "step")
    _assert_same_run(out, reference)


def test_lockstep_pads_every_process_to_the_same_number_of_passes():
    from qdtool.core.distributed import Dist

    def lockstep(items, rank, world):
        return Dist(rank, world).share(items, lockstep=True)

    items = ["a", "b", "c"]
    assert lockstep(items, 0, 2) == [("a", 1.0), ("c", 1.0)]
    assert lockstep(items, 1, 2) == [("b", 1.0), ("a", 0.0)]
    assert lockstep(["a"], 1, 2) == [("a", 0.0)]  # no micro-batch of its own: one weight-0 pass
    assert lockstep([], 0, 2) == []
    assert [len(lockstep(list(range(n)), r, 4)) for n in (5, 8) for r in range(4)] == [2, 2, 2, 2, 2, 2, 2, 2]
    assert Dist(1, 2).share(items) == [("b", 1.0)]  # without lockstep (DDP): no padding
