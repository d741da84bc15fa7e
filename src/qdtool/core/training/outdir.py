"""Which run directory a `train` uses, and whether it may: one run per directory, resumed or refused."""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from qdtool.config import TrainConfig
from qdtool.core.distributed import Dist
from qdtool.core.files import ensure_writable_dir
from qdtool.core.rundir import RUNS, RunDir
from qdtool.core.training.state import TrainResult
from qdtool.errors import ConfigError

# Settings that do not change what is learned: a run may be resumed with other values.
# (max_steps and epochs are not among them: they set the LR schedule's horizon.) trust_remote_code
# comes from the command line only, so a resume without the flag is the same run, not another.
_RUN_CONTROL = {"eval_steps", "save_steps", "save_total_limit", "report_to", "run_name", "output_dir", "trust_remote_code"}


def default_output_dir(config: TrainConfig) -> Path:
    """runs/MODEL-DATA, e.g. runs/gemma-3-270m-examples; a hub split's ':' and other characters that
    some filesystems or shells refuse (\\ * ? " < > | whitespace) become '-'."""
    model = Path(config.model).name if config.model != "embedded" else "gemma-3-270m"
    data = Path(config.data).stem if config.data else "examples"
    return RUNS / re.sub(r'[/\\:*?"<>|\s]+', "-", f"{model}-{data}")


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in _RUN_CONTROL}


def prepare_output_dir(config: TrainConfig, overwrite: bool) -> Path:
    """Refuse to mix two different runs in one directory; `overwrite` clears a qdtool run dir only.

    A run that left nothing to resume or keep (no checkpoint, no adapter, no summary: its model
    failed to load, or it stopped before its first checkpoint) does not hold the directory: the
    next `train` there starts afresh with its own settings, without --overwrite.
    """
    import yaml

    out = RunDir(config.output_dir)
    ensure_writable_dir(out.path)  # a read-only or unwritable run dir fails here, before anything loads
    if out.holds_files():
        if not out.is_run():
            raise ConfigError(f"{out} is not empty and holds no qdtool run; choose another --output-dir (qdtool never deletes it)")
        if overwrite:
            out.lock().close()  # refuses while another train holds the directory
            out.clear()
        elif out.has_trained():  # else nothing there can be resumed or kept: this run's run_config.yaml replaces it
            # A setting the saved run predates (an older qdtool wrote it) had that setting's default.
            saved = {**TrainConfig().model_dump(mode="json"), **(yaml.safe_load(out.config.read_text(encoding="utf-8")) or {})}
            now = config.model_dump(mode="json")
            differ = sorted(k for k in set(_comparable(saved)) | set(_comparable(now)) if saved.get(k) != now.get(k))
            if differ:
                raise ConfigError(
                    f"{out} holds a run with a different configuration (differs in: {', '.join(differ)}); "
                    "pass --overwrite to replace it, or choose another --output-dir"
                )
    out.path.mkdir(parents=True, exist_ok=True)
    return out.path


def claim(config: TrainConfig, overwrite: bool, dist: Dist, held: ExitStack) -> RunDir:
    """The run directory, checked and locked by the first process (the lock lasts as long as `held`)."""
    out = RunDir(config.output_dir)
    if dist.main:
        out = RunDir(prepare_output_dir(config, overwrite))
        held.enter_context(out.lock())  # one training per run directory
    dist.barrier()
    return out


def check_resume_arguments(resume: str, overwrite: bool) -> None:
    """--resume auto|never|PATH and --overwrite, checked before anything is read from the run dir."""
    from qdtool.core import checkpoint

    explicit = resume not in ("auto", "never")
    if explicit and not checkpoint.is_checkpoint(Path(resume)):
        raise ConfigError(f"--resume {resume}: not a complete checkpoint directory (use auto, never, or runs/NAME/checkpoints/step-N)")
    if explicit and overwrite:
        raise ConfigError("--overwrite would delete the checkpoint that --resume names; pass only one of them")


def finished_result(out: RunDir, resume: str) -> TrainResult | None:
    """The saved result of a run that is already complete (and not to be redone), else None."""
    from qdtool.core.files import read_json

    if out.is_finished() and resume == "auto":
        summary = read_json(out.summary)
        return TrainResult(**{**summary, "already_complete": True})
    return None


def resume_point(out: RunDir, resume: str) -> Path | None:
    """The checkpoint this run continues from, or None to start at step 0."""
    from qdtool.core import checkpoint

    latest = checkpoint.latest_checkpoint(out.checkpoints)
    if resume == "never" and (out.is_finished() or latest is not None):
        raise ConfigError(f"{out} already holds this run and --resume never was given; pass --overwrite to start again")
    if resume not in ("auto", "never"):
        return Path(resume)
    return latest if resume == "auto" else None
