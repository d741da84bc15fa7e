"""Where training metrics go: metrics.jsonl always, wandb or TensorBoard if asked, loss.png at the end.

A tracker that fails (no network, not logged in, missing package) is switched off with a warning:
tracking never kills training.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qdtool.core.files import append_json_line, json_line, read_json_lines, write_bytes_atomic, write_text_atomic

Warn = Callable[[str], None]


class MetricsFile:
    """metrics.jsonl, truncated to `start_step` on resume so the curve has no duplicate steps."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path = path
        rows = self.rows() if start_step > 0 else []
        kept = [row for row in rows if isinstance(row, dict) and row.get("step", 0) <= start_step]
        write_text_atomic(path, "".join(json_line(row) for row in kept))

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (a kill leaves at most a torn last line, which a resume drops)."""
        append_json_line(self.path, row)

    def rows(self) -> list[dict[str, Any]]:
        return read_json_lines(self.path)


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class Tracker:
    def __init__(self, kind: str, run_dir: Path, run_name: str, config: dict[str, Any], warn: Warn) -> None:
        self.kind = "wandb" if kind == "auto" and wandb_logged_in() else ("none" if kind == "auto" else kind)
        self.warn = warn
        self._run: Any = None
        try:
            if self.kind == "wandb":
                self._start_wandb(run_dir, run_name, config)
            elif self.kind == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self._run = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        except Exception as exc:  # noqa: BLE001 - any tracker failure is non-fatal by design
            self._disable(f"{self.kind} could not start ({type(exc).__name__}: {exc}); continuing without it")

    def _start_wandb(self, run_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        import wandb

        try:
            self._run = wandb.init(project="qdtool", name=run_name, id=self._run_id(run_dir), dir=str(run_dir), config=config,
                                   resume="allow", settings=wandb.Settings(init_timeout=30, silent=True))
        except Exception:  # noqa: BLE001 - no network: keep the data locally
            self._run = wandb.init(project="qdtool", name=run_name, id=self._run_id(run_dir), dir=str(run_dir), config=config,
                                   resume="allow", mode="offline", settings=wandb.Settings(silent=True))
            self.warn("wandb is offline: metrics are kept in the run dir; `wandb sync` uploads them later")

    @staticmethod
    def _run_id(run_dir: Path) -> str:
        """One wandb run per run directory, so a resumed run continues its curve there."""
        import hashlib

        return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]

    def _disable(self, message: str) -> None:
        self.warn(message)
        self.kind, self._run = "none", None

    def log(self, row: dict[str, Any], step: int) -> None:
        if self._run is None:
            return
        values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        try:
            if self.kind == "wandb":
                self._run.log(values, step=step)
            else:
                for key, value in values.items():
                    self._run.add_scalar(key, value, step)
        except Exception as exc:  # noqa: BLE001
            self._disable(f"{self.kind} logging failed ({exc}); continuing without it")

    def close(self) -> None:
        try:
            if self._run is not None:
                (self._run.finish if self.kind == "wandb" else self._run.close)()
        except Exception:  # noqa: BLE001
            pass


def plot_losses(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Train and eval loss curves as a PNG; None when there is nothing to draw."""
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    write_bytes_atomic(path, image.getvalue())
    return path
