"""resources.py: the bundled data and configs are found (source checkout or wheel layout)."""

from __future__ import annotations

from qdtool.core.data import read_dataset
from qdtool.resources import configs_dir, default_train_files, example_data_dir


def test_bundled_training_data_and_presets_are_found():
    files = default_train_files()
    assert [f.name for f in files] == ["strategyqa_train.jsonl", "ko_samples.jsonl"]
    assert sum(len(read_dataset(f)) for f in files) == 1901
    assert (example_data_dir() / "LICENSE.strategyqa").is_file()
    assert sorted(p.stem for p in (configs_dir() / "presets").glob("*.yaml")) == ["12gb", "16gb", "24gb", "48gb", "80gb", "8gb", "cpu"]
