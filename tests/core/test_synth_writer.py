"""core/synth/writer: FILE.jsonl + FILE.dropped.jsonl, durable appends, torn last lines repaired, foreign files refused."""

from __future__ import annotations

import json

import pytest

from qdtool.core.synth import SynthOutput, dropped_path
from qdtool.core.synth.run import pending
from qdtool.errors import DataError

KEPT = {"id": 7, "question": "Is the sky blue?", "sub_questions": ["What colour is the sky?", "Is #1 blue?"], "synth": {"agreement": 1.0}}


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def test_the_dropped_file_sits_beside_the_output():
    assert dropped_path("data/synth.jsonl").as_posix() == "data/synth.dropped.jsonl"
    assert dropped_path("out").as_posix() == "out.dropped.jsonl"


def test_appends_and_reads_back_the_keys_to_skip(tmp_path):
    out = tmp_path / "s.jsonl"
    with SynthOutput(out) as output:
        output.keep(KEPT)
        output.drop({"question": "Why?", "reason": "no_valid_candidate"})
        assert out.read_text(encoding="utf-8") == _line(KEPT)  # on disk at once, before close
    again = SynthOutput(out)
    assert again.done_keys() == {'id:7', "question:Why?"} and again.done_keys(retry_dropped=True) == {"id:7"}
    assert again.repaired == []


def test_a_torn_half_record_is_cut_off_and_asked_again(tmp_path):
    out = tmp_path / "s.jsonl"
    second = {"question": "Is it?", "sub_questions": ["What is it?", "Is #1 so?"]}
    out.write_text(_line(KEPT) + _line(second)[:25], encoding="utf-8")
    output = SynthOutput(out)
    assert output.repaired == [out] and output.done_keys() == {"id:7"}
    assert out.read_text(encoding="utf-8") == _line(KEPT)  # the half line is gone from the disk too
    output.keep(second)
    output.close()
    assert out.read_text(encoding="utf-8") == _line(KEPT) + _line(second)


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text(_line(KEPT).rstrip("\n"), encoding="utf-8")
    output = SynthOutput(out)
    assert output.done_keys() == {"id:7"} and out.read_text(encoding="utf-8") == _line(KEPT)


def test_readonly_reads_a_torn_file_without_touching_it(tmp_path):
    out = tmp_path / "s.jsonl"
    torn = _line(KEPT) + '{"question": "Is'
    out.write_text(torn, encoding="utf-8")
    assert SynthOutput(out, readonly=True).done_keys() == {"id:7"}
    assert out.read_text(encoding="utf-8") == torn


def test_a_file_that_is_not_ours_is_refused(tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text('{"name": "something else"}\n' + _line(KEPT), encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.jsonl:1: not a synth output record; .* \(choose another --out\)"):
        SynthOutput(out)
    assert out.read_text(encoding="utf-8").startswith('{"name"')  # never appended to


def test_forget_dropped_rewrites_the_sidecar_without_them(tmp_path):
    out = tmp_path / "s.jsonl"
    sidecar = dropped_path(out)
    sidecar.write_text(_line({"question": "A?", "reason": "low_agreement"}) + _line({"question": "B?", "reason": "single_valid"}))
    output = SynthOutput(out)
    assert output.forget_dropped({"question:A?"}) == 1
    assert [json.loads(x)["question"] for x in sidecar.read_text().splitlines()] == ["B?"]


def test_pending_skips_done_rows_and_repeats_in_input_order():
    rows = [{"question": "A?"}, {"question": "B?"}, {"question": "A?"}, {"id": 7, "question": "other text"}, {"question": "C?"}]
    todo, already, repeats = pending(rows, {"question:B?", "id:7"})
    assert [i for i, _ in todo] == [0, 4] and (already, repeats) == (2, 1)
