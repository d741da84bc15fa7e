"""Helpers of the core/training tests: a small data file, a quick config, runs in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from qdtool.config import TrainConfig, load_train_config
from qdtool.core.training import step as one_step

from conftest import SLOW_TRAIN

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "data"


def example_data(directory: Path) -> Path:
    """40 records (30 StrategyQA, 10 Korean) in `directory`/train.jsonl."""
    lines = (EXAMPLES / "strategyqa_train.jsonl").read_text(encoding="utf-8").splitlines()[:30]
    lines += (EXAMPLES / "ko_samples.jsonl").read_text(encoding="utf-8").splitlines()[:10]
    path = directory / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_config(model_dir: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), data=str(data), output_dir=str(out), max_steps=6, batch_tokens=1024,
                  max_seq_len=512, eval_steps=3, save_steps=100, lr=3e-3, report_to="none", eval_split=0.2,
                  eval_decode_max_new_tokens=16)  # eval SARI decodes, briefly: a random tiny model never stops by itself
    return load_train_config(overrides={**values, **overrides})


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def stop_after(monkeypatch, step: int) -> None:
    """SIGTERM at the end of `step`: the loop saves a checkpoint there and stops."""
    real = one_step.train_step

    def stopping(*args, **kwargs):
        row = real(*args, **kwargs)
        if row["step"] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return row

    monkeypatch.setattr(one_step, "train_step", stopping)


def cli_args(model_dir, data, out, steps=10, **flags):
    """`qdtool train` arguments of a quick run; `flags` (eval_steps=1, ...) replace or add options."""
    values = {"model": model_dir, "data": data, "output_dir": out, "max_steps": steps, "batch_tokens": 1024, "max_seq_len": 512,
              "save_steps": 2, "eval_steps": 100, "lr": "3e-3", "report_to": "none", "eval_split": 0.2,
              "eval_decode_max_new_tokens": 16, **flags}
    return ["train", *(part for name, value in values.items() for part in ("--" + name.replace("_", "-"), str(value)))]


def spawn(args, slow: bool):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code = SLOW_TRAIN if slow else "import sys\nfrom qdtool.cli.app import app\napp(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)
