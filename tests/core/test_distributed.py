"""`qdtool train` under torchrun: 2 CPU processes (gloo) train one adapter, written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

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
    done = subprocess.run([sys.executable, "-m", "qdtool", *_args(tiny_model_dir, single, 2)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "qdtool", *_args(tiny_model_dir, ddp, 1)]
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
