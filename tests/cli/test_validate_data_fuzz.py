"""Fuzz: whatever a file holds, every JSON reader returns a result or a QdtoolError, never another
exception; validate-data and eval exit 0 or 1 with a message, never a traceback.

Over 10,000 inputs in all (issue 18): random bytes, JSON-looking garbage, random JSON values and
near-records, nesting up to 3,000 deep, integers around Python's 4,300-digit limit, and strings and
keys with lone surrogate escapes. The core readers are called directly (fast); a hundred
inputs also go through the CLI. Each property counts the inputs it ran, so a shrunken budget fails.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qdtool.cli.app import app
from qdtool.core.data import MAX_JSON_DEPTH, load_records
from qdtool.core.evaluation import read_predictions
from qdtool.core.generation import read_questions
from qdtool.errors import QdtoolError

runner = CliRunner()
_DIR = Path(tempfile.mkdtemp(prefix="qdtool-fuzz-"))
_INT_LIMIT = 4300
BUDGET = {"bytes": 2500, "fragments": 2500, "values": 1200, "deep": 1200, "integers": 1500, "surrogates": 1500, "cli": 100}
_ran: dict[str, int] = {}


def fuzz(name: str):
    """Hypothesis settings for one property: its budget, no deadline (the machine is shared)."""
    return settings(max_examples=BUDGET[name], deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run_budget(name: str, prop) -> None:
    _ran[name] = 0
    prop()
    assert _ran[name] >= BUDGET[name], f"{name}: only {_ran[name]} inputs ran"


def read_everywhere(name: str, content: bytes, suffix: str) -> list:
    """The content through all three readers (and stdin); the validate-data problems' texts."""
    _ran[name] += 1
    path = _DIR / f"data{suffix}"
    path.write_bytes(content)
    result = load_records(path)
    problems = [str(p) for p in result.problems]
    assert result.ok == (not result.errors) and (result.records or result.errors or not content.strip() or result.problems)
    for reader, args in ((read_predictions, (path,)), (read_questions, (path,)), (read_questions, ("-", content))):
        try:
            reader(*args)
        except QdtoolError:
            pass
    return problems


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
        "sub_questions": st.one_of(
            st.lists(st.one_of(st.text(max_size=20), st.from_regex(r"#\d{1,2} \w*\?", fullmatch=True), json_values), max_size=5),
            json_values,
        ),
        "id": json_values,
    },
)
# Pieces of JSON and of hostile input, joined at random: broken syntax, BOMs, escapes, huge numbers.
FRAGMENTS = [
    '{"question": ', '"sub_questions": ', '"id": ', '[', ']', '{', '}', ',', ':', '"', '\\', '\n', '\r\n', ' ',
    '"Q?"', '"#1 and #2?"', '1', '-0', '1e999', 'NaN', 'true', 'null', '\ufeff', '\\ud800', '\\udfff', '\\ud83d\\ude00',
    '\\u0000', '"\\ud800"', '[' * 120, ']' * 120, '{"a":' * 60, '1' * (_INT_LIMIT + 1), '9' * _INT_LIMIT, '세종?', '\x00', '\u2028',
]
fragment_texts = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=12).map("".join)
surrogate_text = st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010) | st.sampled_from("ab? #1"), max_size=8)


def test_random_bytes_never_crash():
    @fuzz("bytes")
    @given(st.binary(max_size=200), st.sampled_from([".jsonl", ".json", ".txt"]))
    def prop(content, suffix):
        read_everywhere("bytes", content, suffix)

    run_budget("bytes", prop)


def test_json_looking_garbage_never_crashes():
    @fuzz("fragments")
    @given(fragment_texts, st.sampled_from([".jsonl", ".json"]), st.sampled_from(["utf-8", "utf-16", "latin-1"]))
    def prop(text, suffix, encoding):
        read_everywhere("fragments", text.encode(encoding, "surrogatepass" if encoding != "latin-1" else "replace"), suffix)

    run_budget("fragments", prop)


def test_random_json_values_never_crash():
    @fuzz("values")
    @given(st.one_of(json_values, st.lists(near_records, max_size=4), near_records), st.booleans())
    def prop(value, as_lines):
        if as_lines and isinstance(value, list):
            read_everywhere("values", "\n".join(json.dumps(v, ensure_ascii=False) for v in value).encode(), ".jsonl")
        else:
            read_everywhere("values", json.dumps(value, ensure_ascii=False).encode(), ".json")

    run_budget("values", prop)


def test_deep_nesting_is_an_error_past_the_limit():
    @fuzz("deep")
    @given(st.integers(1, 3000), st.lists(st.sampled_from(["[", '{"k": ']), min_size=1, max_size=3), st.booleans(), st.booleans())
    def prop(depth, openers, in_record, as_array):
        opened = [openers[i % len(openers)] for i in range(depth)]
        value = "".join(opened) + "1" + "".join("]" if o == "[" else "}" for o in reversed(opened))
        record = f'{{"question": "Q?", "sub_questions": ["a?", "b?"], "meta": {value}}}' if in_record else value
        levels = depth + 1 if in_record else depth  # containers, counting the record itself
        content = f"[{record}]" if as_array else record + "\n"
        problems = read_everywhere("deep", content.encode(), ".json" if as_array else ".jsonl")
        assert any("nested too deeply" in p for p in problems) == (levels > MAX_JSON_DEPTH), problems

    run_budget("deep", prop)


def test_integers_past_pythons_limit_are_an_error():
    @fuzz("integers")
    @given(st.integers(_INT_LIMIT - 50, _INT_LIMIT + 400), st.sampled_from(["id", "step", "top"]), st.booleans())
    def prop(digits, where, negative):
        number = ("-" if negative else "") + "7" * digits
        record = {"id": '{"question": "Q?", "sub_questions": ["a?", "b?"], "id": %s}',
                  "step": '{"question": "Q?", "sub_questions": ["a?", %s]}', "top": "%s"}[where] % number
        problems = read_everywhere("integers", (record + "\n").encode(), ".jsonl")
        assert any(f"integer with {digits:,} digits" in p for p in problems) == (digits > _INT_LIMIT), problems

    run_budget("integers", prop)


def test_lone_surrogates_are_an_error_wherever_they_are():
    @fuzz("surrogates")
    @given(surrogate_text, st.lists(surrogate_text, min_size=1, max_size=3), st.dictionaries(surrogate_text, surrogate_text, max_size=2),
           st.booleans())
    def prop(question, steps, extra, as_array):
        record = {"question": question + "?", "sub_questions": steps, **{"x" + k: v for k, v in extra.items()}}
        text = json.dumps(record)  # ensure_ascii: every surrogate becomes a \\udXXX escape
        decoded = json.loads(text)  # an adjacent high + low pair decodes to one character: not lone
        texts = [decoded["question"], *decoded["sub_questions"], *decoded] + [str(v) for v in decoded.values()]
        lone = any(0xD800 <= ord(c) <= 0xDFFF for s in texts for c in s)
        content = f"[{text}]" if as_array else text + "\n"
        problems = read_everywhere("surrogates", content.encode(), ".json" if as_array else ".jsonl")
        assert any("lone UTF-16 surrogate" in p for p in problems) == lone, problems

    run_budget("surrogates", prop)


REFS = _DIR / "refs.jsonl"
REFS.write_text(json.dumps({"id": "a", "question": "Q?", "sub_questions": ["a?", "b?"]}) + "\n")
cli_inputs = st.one_of(st.binary(max_size=100), fragment_texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
                       st.lists(near_records, max_size=3).map(lambda v: "\n".join(json.dumps(r) for r in v).encode()))


def test_the_cli_exits_0_or_1_with_a_message():
    @fuzz("cli")
    @given(cli_inputs, st.sampled_from([".jsonl", ".json"]))
    def prop(content, suffix):
        _ran["cli"] += 1
        path = _DIR / f"cli{suffix}"
        path.write_bytes(content)
        for args in (["validate-data", str(path)], ["validate-data", str(path), "--json"],
                     ["eval", "--data", str(REFS), "--predictions", str(path)]):
            result = runner.invoke(app, args)
            assert result.exit_code in (0, 1), (args, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
            assert "Traceback" not in result.output and "internal error" not in result.output
            if args[0] == "validate-data" and "--json" not in args:
                assert ("✓ valid" in result.output) if result.exit_code == 0 else ("✗ invalid" in result.output)

    run_budget("cli", prop)


def test_the_budget_is_over_10_000_inputs():
    assert sum(BUDGET.values()) >= 10_000
