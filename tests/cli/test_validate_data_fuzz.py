"""Property: whatever bytes or JSON a file holds, validate-data exits 0 or 1 with a message, no traceback."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qdtool.cli.app import app

runner = CliRunner()
_DIR = Path(tempfile.mkdtemp(prefix="qdtool-fuzz-"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Records that look almost right, so the field checks are exercised, not only the parser.
near_records = st.fixed_dictionaries(
    {},
    optional={
        "question": st.one_of(st.text(max_size=30), json_values),
        "sub_questions": st.one_of(st.lists(st.one_of(st.text(max_size=20), st.from_regex(r"#\d{1,2} \w*\?", fullmatch=True), json_values), max_size=5), json_values),
        "id": json_values,
    },
)


def check(content: bytes, suffix: str) -> None:
    path = _DIR / f"data{suffix}"
    path.write_bytes(content)
    result = runner.invoke(app, ["validate-data", str(path)])
    assert result.exit_code in (0, 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert ("✓ valid" in result.output) if result.exit_code == 0 else ("✗ invalid" in result.output)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from([".jsonl", ".json", ".txt"]))
def test_random_bytes_never_crash(content, suffix):
    check(content, suffix)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.lists(near_records, max_size=4), near_records), st.booleans())
def test_random_json_values_never_crash(value, as_lines):
    if as_lines and isinstance(value, list):
        content = "\n".join(json.dumps(v, ensure_ascii=False) for v in value).encode("utf-8")
        check(content, ".jsonl")
    else:
        check(json.dumps(value, ensure_ascii=False).encode("utf-8"), ".json")
