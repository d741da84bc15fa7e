"""Helpers of the tests that train under torchrun (test_distributed.py, test_sharding.py): two CPU
processes on gloo, compared with one process doing the same work."""

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


def train_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    # 380-token rows over 256-token samples give steps of 1 to 3 micro-batches: some steps leave
    # the second process without one (it must still run a weight-0 pass). The split depends on the
    # fixture tokenizer, trained on examples/data: when that data changes, check the steps still vary.
    return ["train", "--model", str(model_dir), "--data", str(EXAMPLES / "sample_train.json"), "--output-dir", str(out),
            "--batch-tokens", "380", "--max-seq-len", "256", "--report-to", "none", "--eval-split", "0.2", "--epochs", "2",
            "--lr", "1e-3", "--precision", "fp32", "--lora-dropout", "0", "--grad-accum", "1", *extra]


def torchrun(script: list[str], env: dict[str, str], **kwargs):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def metric(path: Path, key: str) -> list[float]:
    return [row[key] for row in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if key in row]


def assert_same_run(got: Path, want: Path) -> None:
    a = load_file(str(want / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(got / "adapter" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    for key in ("loss", "grad_norm", "eval_loss"):  # grad_norm: a gradient off by the process count would show here
        torch.testing.assert_close(torch.tensor(metric(got, key)), torch.tensor(metric(want, key)), rtol=1e-4, atol=1e-5)


def single_process_reference(model_dir: Path, out: Path, env: dict[str, str], *extra: str) -> None:
    """What two processes should match: one process taking both micro-batches of each step."""
    done = subprocess.run([sys.executable, "-m", "qdtool", *train_args(model_dir, out, "--grad-accum", "2", *extra)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def kill_after_step_4_then_resume(args: list[str], out: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """Run `qdtool train ARGS` under torchrun (2 processes, slowed down), SIGKILL every process once
    the step-4 checkpoint exists, then run the same command again to completion."""
    runner = tmp_path / "slow_train.py"
    runner.write_text(SLOW_TRAIN)
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = torchrun([str(runner), *args], {**env, "PID_DIR": str(pids)})
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

    resumed = torchrun(["-m", "qdtool", *args], env)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, (stdout[-2000:], stderr[-4000:])
    assert "resuming from" in stderr
