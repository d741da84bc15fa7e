"""core/events.py: the typed events of a training run, in the order the CLI renders them."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from qdtool.config import load_train_config
from qdtool.core import events
from qdtool.core.training import train

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def test_every_event_is_a_frozen_dataclass():
    kinds = typing.get_args(events.Event)
    assert [k.__name__ for k in kinds] == ["Info", "Warn", "Start", "Step", "Eval", "Checkpoint"]
    for kind in kinds:
        assert dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        events.Eval(3, 1.5).eval_loss = 0.0


def test_a_run_reports_typed_events_that_match_its_metrics(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = load_train_config(overrides=dict(
        model=str(tiny_model_dir), data=str(EXAMPLES / "sample_train.json"), output_dir=str(out), max_steps=4, save_steps=2,
        eval_steps=2, batch_tokens=1024, max_seq_len=512, report_to="none", eval_split=0.2, lora_r=4))
    seen: list[events.Event] = []
    result = train(config, on_event=seen.append)
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "Info" and "Warn" not in kinds
    assert kinds[kinds.index("Start"):] == ["Start", "Eval", "Step", "Step", "Eval", "Checkpoint", "Step", "Step", "Eval", "Info"]
    assert seen[-1].message.startswith("adapter: the weights of step ")  # which evaluation's weights were written
    start = next(e for e in seen if isinstance(e, events.Start))
    assert (start.total_steps, start.start_step, start.output_dir) == (4, 0, str(out))
    assert start.train_samples == result.train_records and start.trainable_params == result.trainable_params
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [dataclasses.asdict(e) for e in seen if isinstance(e, events.Step)] == [r for r in rows if "loss" in r]
    assert [(e.step, e.eval_loss) for e in seen if isinstance(e, events.Eval)] == [(r["step"], r["eval_loss"]) for r in rows
                                                                                   if "eval_loss" in r]
    checkpoint = next(e for e in seen if isinstance(e, events.Checkpoint))
    assert checkpoint.step == 2 and checkpoint.path == str(out / "checkpoints" / "step-0000002")
