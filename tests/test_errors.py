"""errors.py: the exit code of each error a user can act on."""

from __future__ import annotations

import pytest

from qdtool.errors import ConfigError, DataError, ModelError, QdtoolError, TrainingError, TrainingInterrupted, UsageError


@pytest.mark.parametrize(("kind", "code"), [(QdtoolError, 1), (UsageError, 2), (DataError, 1), (ConfigError, 1), (ModelError, 1),
                                            (TrainingError, 1)])
def test_exit_codes(kind, code):
    error = kind("what is wrong, and what to run next")
    assert isinstance(error, QdtoolError) and error.exit_code == code
    assert str(error) == "what is wrong, and what to run next"


def test_an_interruption_carries_its_own_exit_code():
    error = TrainingInterrupted("stopped at step 7; run the same command to resume", 130)
    assert isinstance(error, QdtoolError)
    assert (error.exit_code, str(error)) == (130, "stopped at step 7; run the same command to resume")
    assert QdtoolError.exit_code == 1  # set on the instance, not the class
