"""core/tracking.py: metrics.jsonl cut back on resume, written whole, and a full disk is a message."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from qdtool.core.files import WriteError
from qdtool.core.tracking import MetricsFile, plot_losses


def test_resume_cuts_metrics_back_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    metrics = MetricsFile(path, start_step=2)
    assert [r["step"] for r in metrics.rows()] == [1, 2]
    metrics.write({"step": 3, "loss": 0.5})
    assert [r["step"] for r in metrics.rows()] == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file left beside it


def test_a_full_disk_while_logging_is_a_located_write_error(tmp_path, monkeypatch):
    metrics = MetricsFile(tmp_path / "metrics.jsonl", start_step=0)
    real = Path.open

    def full(self, mode="r", *args, **kwargs):
        if self.name == "metrics.jsonl" and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(WriteError, match=r"no space left on the device holding .*metrics.jsonl"):
        metrics.write({"step": 1, "loss": 1.0})


def test_the_loss_plot_is_a_whole_png_or_nothing(tmp_path):
    assert plot_losses([], tmp_path / "loss.png") is None and not (tmp_path / "loss.png").exists()
    path = plot_losses([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_loss": 1.7}], tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]


def test_a_fresh_run_empties_metrics_and_a_torn_line_never_breaks_reading(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n')
    metrics = MetricsFile(path, start_step=0)  # not a resume: the old curve goes
    assert path.read_text() == "" and metrics.rows() == []
    metrics.write({"step": 1, "loss": 1.5, "run": "실험"})
    with path.open("a", encoding="utf-8") as f:
        f.write('{"step": 2, "lo')  # killed mid-line
    assert metrics.rows() == [{"step": 1, "loss": 1.5, "run": "실험"}]
    resumed = MetricsFile(path, start_step=5)
    assert path.read_text(encoding="utf-8") == '{"step": 1, "loss": 1.5, "run": "실험"}\n' and resumed.rows()[0]["step"] == 1
