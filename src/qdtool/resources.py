"""Files that ship with qdtool: the example data and the YAML configs.

In a wheel they live in `qdtool/_bundled/` (see pyproject's force-include); in a source checkout
they are read from the repository's `examples/data` and `configs`.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_REPO = _PACKAGE.parent.parent

DEFAULT_TRAIN_FILES = ("strategyqa_train.jsonl", "ko_samples.jsonl")


def _find(bundled: str, repo: str) -> Path:
    for candidate in (_PACKAGE / "_bundled" / bundled, _REPO / repo):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"qdtool's bundled {bundled} are missing; reinstall qdtool")


def example_data_dir() -> Path:
    return _find("examples", "examples/data")


def configs_dir() -> Path:
    return _find("configs", "configs")


def default_train_files() -> list[Path]:
    directory = example_data_dir()
    return [directory / name for name in DEFAULT_TRAIN_FILES]
