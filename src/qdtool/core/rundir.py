"""The layout of a run directory, in one place: what `train` writes and `merge` / `decompose` read.

    runs/NAME/
      run_config.yaml   the resolved settings; written once the model has loaded
      adapter/          LoRA weights, tokenizer and card; written whole at the end
      model/            instead of adapter/ for method full: the whole fine-tuned model (safetensors), tokenizer and card
      run_summary.json  what happened; written last, so its presence means the run finished
      metrics.jsonl     one row per step and per evaluation; loss.png, its curves
      checkpoints/      step-N/ resume points, removed once the adapter is written
      best/             step-N/ the weights of the best evaluation (and those kept checkpoints name), removed with them
      merged/           `qdtool merge`'s default output
      .lock             held by the one `train` that runs here
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import IO

from qdtool.errors import ConfigError

RUNS = Path("runs")  # where `qdtool train` puts its runs by default


class RunDir:
    """A run directory: its paths, and the few facts about it that several commands ask."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def model(self) -> Path:
        """A full fine-tuning run's result: a standalone model directory (`from_pretrained` loads it)."""
        return self.path / "model"

    @property
    def config(self) -> Path:
        return self.path / "run_config.yaml"

    @property
    def summary(self) -> Path:
        return self.path / "run_summary.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        """Where the weights of the best evaluation so far are kept (`core/training/best.py`)."""
        return self.path / "best"

    @property
    def merged(self) -> Path:
        return self.path / "merged"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @property
    def resume_command(self) -> str:
        return f"qdtool train --config {self.config}"

    def is_run(self) -> bool:
        """Whether a qdtool run was started here (its settings are saved)."""
        return self.config.is_file()

    def is_finished(self) -> bool:
        return self.summary.is_file()

    def has_adapter(self) -> bool:
        """Whether the adapter is complete enough to load (its adapter_config.json is there)."""
        return (self.adapter / "adapter_config.json").is_file()

    def has_model(self) -> bool:
        """Whether a full fine-tuning run's model is complete enough to load (its config.json is there)."""
        return (self.model / "config.json").is_file()

    def is_full_run(self) -> bool:
        """Whether the run here trains with method full (its run_config.yaml says so): it makes model/, not adapter/,
        and there is nothing to merge."""
        import yaml

        try:
            saved = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False  # no run, or a broken file that loading the config reports properly
        return isinstance(saved, dict) and saved.get("method") == "full"

    def merge_refusal(self) -> str | None:
        """Why `qdtool merge` has nothing to do here (a full fine-tuning run), else None."""
        if not self.is_full_run():
            return None
        if not self.has_model():
            return (f"{self} is a full fine-tuning run (method full) without {self.model.name}/ yet: it may not have finished training. "
                    f"Resume it with `{self.resume_command}`; there is no adapter to merge")
        return (f"{self} is a full fine-tuning run (method full): there is no adapter to merge, {self.model} is already a standalone "
                f"model. Pass {self} to `qdtool decompose` / `qdtool eval` as it is, or copy {self.model} to share it")

    def has_trained(self) -> bool:
        """Whether it holds something a run trained: a checkpoint to resume, an adapter or model, a summary."""
        from qdtool.core.checkpoint import latest_checkpoint

        return (self.is_finished() or self.adapter.exists() or self.model.exists()
                or latest_checkpoint(self.checkpoints) is not None)

    def holds_files(self) -> bool:
        """Whether anything but the lock file is here."""
        return self.path.exists() and any(p.name != ".lock" for p in self.path.iterdir())

    def clear(self) -> None:
        """Delete everything but the lock file (which another `train` may be waiting on)."""
        for path in self.path.iterdir():
            if path.name != ".lock":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def lock(self) -> IO[str]:
        """An exclusive lock on the directory, held until the returned file is closed.

        Raises:
            ConfigError: another `train` holds it.
        """
        import fcntl

        handle = self.lock_file.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(f"another qdtool train is running in {self.path}; wait for it, or stop it first "
                              "(Ctrl-C saves a checkpoint)") from None
        return handle

    @classmethod
    def holding_adapter(cls, path: str | Path) -> RunDir | None:
        """The run whose adapter/ `path` is (people pass RUN/adapter for RUN), else None."""
        path = Path(path)
        run = cls(path.parent)
        return run if (path / "adapter_config.json").is_file() and run.is_run() else None

    @classmethod
    def latest(cls, runs: Path = RUNS) -> RunDir | None:
        """The run under `runs` whose settings were written last, among those with an adapter, a full run's model or a merged model."""
        if not runs.is_dir():
            return None
        found = [cls(p) for p in runs.iterdir()]
        found = [r for r in found if r.is_run() and (r.adapter.is_dir() or r.has_model() or (r.path / "config.json").is_file())]
        return max(found, key=lambda r: r.config.stat().st_mtime, default=None)
