"""cli/_common.py: a QdtoolError becomes one line and its exit code, a bug exits 3, logs keep their width."""

from __future__ import annotations

import logging
import os

import pytest
import typer

from qdtool.cli import _common
from qdtool.cli._common import BUG_EXIT_CODE, LOG_WIDTH, exit_on_bug, quiet_libraries, status, user_errors
from qdtool.errors import DataError, TrainingInterrupted, UsageError


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("QDTOOL_DEBUG", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.mark.parametrize(("error", "code"), [(DataError("data/a.jsonl:3: bad"), 1), (UsageError("no such file"), 2),
                                             (TrainingInterrupted("stopped; resume with ...", 130), 130)])
def test_a_qdtool_error_is_one_line_on_stderr_and_its_exit_code(error, code, capsys):
    with pytest.raises(typer.Exit) as exit_info, user_errors():
        raise error
    assert exit_info.value.exit_code == code
    captured = capsys.readouterr()
    assert captured.err == f"error: {error}\n" and captured.out == ""


def test_other_errors_and_qdtool_debug_keep_the_exception(monkeypatch):
    with pytest.raises(KeyError), user_errors():
        raise KeyError("a bug")
    monkeypatch.setenv("QDTOOL_DEBUG", "1")
    with pytest.raises(DataError, match="bad"), user_errors():
        raise DataError("bad")


def _crash() -> None:
    raise RuntimeError("boom\nsecond line")


def test_a_bug_exits_3_naming_where_it_happened(capsys):
    try:
        _crash()
    except RuntimeError as exc:
        with pytest.raises(SystemExit) as exit_info:
            exit_on_bug(exc)
    assert exit_info.value.code == BUG_EXIT_CODE == 3
    line = _crash.__code__.co_firstlineno + 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"internal error: RuntimeError: boom (at test_common.py:{line})"  # the first line of the message only
    assert "QDTOOL_DEBUG=1" in err[1] and "Traceback" not in "\n".join(err)


def test_a_closed_pipe_exits_quietly_and_debug_raises(monkeypatch, capsys):
    monkeypatch.setattr(_common.sys, "stderr", _common.sys.stderr)  # exit_on_bug points stderr at /dev/null
    with pytest.raises(SystemExit) as exit_info:
        exit_on_bug(BrokenPipeError())
    assert exit_info.value.code == 141
    monkeypatch.setenv("QDTOOL_DEBUG", "1")
    with pytest.raises(ValueError, match="shown"):
        exit_on_bug(ValueError("shown"))


def test_off_a_terminal_lines_keep_their_width_unless_columns_says(monkeypatch):
    assert not _common.err_console.is_terminal
    assert _common.err_console.size.width == LOG_WIDTH
    monkeypatch.setenv("COLUMNS", "90")
    assert _common.err_console.size.width == 90


def test_status_off_a_terminal_prints_each_update(capsys):
    with status("loading") as say:
        say("step one")
        say("step two")
    assert capsys.readouterr().err == "step one\nstep two\n"


def test_quiet_libraries(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    logger = logging.getLogger("bitsandbytes")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    quiet_libraries()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert logger.level == logging.ERROR
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    quiet_libraries()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"  # the user's own setting stays
