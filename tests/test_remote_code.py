"""Remote code runs only on this command line's --trust-remote-code: never from a config file or a
run dir's run_config.yaml (which `train` reads to resume, and `merge` / `decompose` read for settings).

The merge and decompose paths are tested end to end in tests/cli/test_merge.py and tests/cli/test_decompose.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qdtool.cli.app import app
from qdtool.config import dump_config, load_train_config
from qdtool.errors import ConfigError


@pytest.fixture
def planted_config(tmp_path):
    path = tmp_path / "run" / "run_config.yaml"
    path.parent.mkdir()
    path.write_text("# written by qdtool train\n" + dump_config(load_train_config(overrides={"model": "someone/model"}))
                    .replace("trust_remote_code: false", "trust_remote_code: true"))
    assert "trust_remote_code: true" in path.read_text()
    return path


def test_a_config_file_never_switches_remote_code_on(planted_config):
    assert load_train_config(planted_config).trust_remote_code is False
    assert load_train_config(planted_config, {"trust_remote_code": None}).trust_remote_code is False
    assert load_train_config(planted_config, {"trust_remote_code": True}).trust_remote_code is True
    assert load_train_config(None, {"trust_remote_code": True}).trust_remote_code is True


def test_resuming_train_from_a_run_config_needs_the_flag(planted_config, captured_train):
    runner = CliRunner()
    runner.invoke(app, ["train", "--config", str(planted_config)])
    assert captured_train["config"].trust_remote_code is False
    runner.invoke(app, ["train", "--config", str(planted_config), "--trust-remote-code"])
    assert captured_train["config"].trust_remote_code is True


def test_a_resume_without_the_flag_is_the_same_run(planted_config):
    """The flag is not part of what a run learns: leaving it off does not make the run dir "another run"."""
    from qdtool.core.training import prepare_output_dir

    (planted_config.parent / "adapter").mkdir(exist_ok=True)  # a run that trained: its settings are compared
    config = load_train_config(None, {"model": "someone/model", "output_dir": str(planted_config.parent)})
    assert prepare_output_dir(config, overwrite=False) == planted_config.parent  # the saved file says true
    other = load_train_config(None, {"model": "someone/model", "lr": 1e-3, "output_dir": str(planted_config.parent)})
    with pytest.raises(ConfigError, match="differs in: lr"):  # the comparison is live: a real difference is refused
        prepare_output_dir(other, overwrite=False)
