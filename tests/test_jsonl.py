"""rlhf_lab.jsonl: every error names the file, the line and the field; writes are atomic."""

import json
import os
import pickle
from pathlib import Path

import pytest

from rlhf_lab.jsonl import DataFormatError, iter_jsonl, read_jsonl, write_jsonl

SFT_FIELDS = {"prompt": str, "answer": str}


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_keeps_records_order_and_unicode(tmp_path):
    records = [
        {"prompt": "What is 7 plus 5?", "answer": "12.", "score": 0.5},
        {"prompt": "Capital of France?", "answer": "Paris — café ✓", "tags": ["fact"], "extra": None},
    ]
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, records)
    assert read_jsonl(path, SFT_FIELDS) == records
    assert list(iter_jsonl(path, SFT_FIELDS)) == records
    # One object per line, LF endings, unicode kept readable in the file.
    assert path.read_bytes().count(b"\n") == 2
    assert "café" in path.read_text(encoding="utf-8")


def test_blank_lines_are_skipped_and_do_not_shift_line_numbers(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", "", '{"prompt": "a", "answer": "b"}', "  ",
                       '{"prompt": "c", "answer": "d"}', "")
    assert read_jsonl(path, SFT_FIELDS) == [{"prompt": "a", "answer": "b"}, {"prompt": "c", "answer": "d"}]
    path = write_lines(tmp_path / "sft.jsonl", '{"prompt": "a", "answer": "b"}', "", "   ",
                       '{"prompt": "c", "answer": 3}')
    with pytest.raises(DataFormatError) as caught:
        read_jsonl(path, SFT_FIELDS)
    assert caught.value.line == 4  # the line number an editor shows


def test_wrong_type_message_names_file_line_field_and_value(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", '{"prompt": "a", "answer": "b"}', '{"prompt": "c", "answer": 3}')
    with pytest.raises(DataFormatError) as caught:
        read_jsonl(path, SFT_FIELDS)
    assert str(caught.value) == f"{path}, line 2, field 'answer': expected a string, got 3"
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), 2, "answer")
    assert isinstance(caught.value, ValueError)


def test_missing_required_field(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", '{"prompt": "a"}')
    with pytest.raises(DataFormatError, match=r"sft\.jsonl, line 1, field 'answer': required field is missing"):
        read_jsonl(path, SFT_FIELDS)


def test_invalid_json_names_line_and_column(tmp_path):
    path = write_lines(tmp_path / "prefs.jsonl", '{"prompt": "a", "answer": "b"}', '{"prompt": "a", "answer": "b"')
    with pytest.raises(DataFormatError, match=r"prefs\.jsonl, line 2: invalid JSON \(.+ at column \d+\)"):
        read_jsonl(path)


def test_line_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", '["a", "b"]')
    expected = r"sft\.jsonl, line 1: expected a JSON object \{\.\.\.\}, got \[\"a\", \"b\"\]"
    with pytest.raises(DataFormatError, match=expected):
        read_jsonl(path)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"sft\.jsonl, line 2: not valid UTF-8"):
        read_jsonl(path)


def test_byte_order_mark_from_windows_editors_is_accepted(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_bytes('{"prompt": "a", "answer": "b"}\n'.encode("utf-8-sig"))
    assert read_jsonl(path, SFT_FIELDS) == [{"prompt": "a", "answer": "b"}]


def test_optional_fields_may_be_missing_but_are_type_checked(tmp_path):
    optional = {"label_source": str}
    good = write_lines(tmp_path / "good.jsonl", '{"prompt": "a", "answer": "b"}')
    assert read_jsonl(good, SFT_FIELDS, optional) == [{"prompt": "a", "answer": "b"}]
    bad = write_lines(tmp_path / "bad.jsonl", '{"prompt": "a", "answer": "b", "label_source": 7}')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 1, field 'label_source': expected a string, got 7"):
        read_jsonl(bad, SFT_FIELDS, optional)


def test_json_number_rules_bool_is_not_int_and_int_is_a_float(tmp_path):
    path = write_lines(tmp_path / "prefs.jsonl", '{"count": 2, "margin": 1}', '{"count": true, "margin": 0.5}')
    with pytest.raises(DataFormatError, match=r"line 2, field 'count': expected an integer, got true"):
        read_jsonl(path, {"count": int, "margin": float})
    path = write_lines(tmp_path / "prefs.jsonl", '{"count": 2, "margin": 1}')
    assert read_jsonl(path, {"count": int, "margin": float}) == [{"count": 2, "margin": 1}]


def test_tuple_of_types_and_its_message(tmp_path):
    path = write_lines(tmp_path / "prefs.jsonl", '{"note": null}', '{"note": "ok"}', '{"note": ["x"]}')
    with pytest.raises(DataFormatError, match=r"line 3, field 'note': expected a string or null, got \[\"x\"\]"):
        read_jsonl(path, {"note": (str, type(None))})


def test_long_values_are_shortened_in_the_message(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", json.dumps({"prompt": "a", "answer": list(range(1000))}))
    with pytest.raises(DataFormatError) as caught:
        read_jsonl(path, SFT_FIELDS)
    assert len(str(caught.value)) < len(str(path)) + 150
    assert str(caught.value).endswith("...")


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "sft.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.sft\\.jsonl"):
        read_jsonl(missing)
    with pytest.raises(FileNotFoundError, match="sft\\.jsonl"):
        iter_jsonl(missing)  # raised on the call, not at the first next()


def test_iter_jsonl_streams_records_before_the_bad_line(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", '{"prompt": "a", "answer": "b"}', "not json")
    records = iter_jsonl(path, SFT_FIELDS)
    assert next(records) == {"prompt": "a", "answer": "b"}
    with pytest.raises(DataFormatError, match="line 2"):
        next(records)


def test_error_survives_pickling(tmp_path):
    # DataLoader workers and multiprocessing send exceptions between processes by pickling them.
    error = DataFormatError(tmp_path / "sft.jsonl", 17, "answer", "expected a string, got 3")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.line == 17 and copy.field == "answer"


def test_write_creates_parent_folders_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "deep" / "er" / "prefs.jsonl"
    write_jsonl(path, [{"a": 1}])
    assert read_jsonl(path) == [{"a": 1}]
    assert os.listdir(path.parent) == ["prefs.jsonl"]


def test_write_replaces_the_file_through_a_rename(tmp_path, monkeypatch):
    path = tmp_path / "prefs.jsonl"
    write_jsonl(path, [{"old": True}])
    renames = []
    real_replace = os.replace

    def spy_replace(source, destination):
        # At rename time the complete new content is already in a sibling file.
        renames.append((Path(source).parent, Path(destination), read_jsonl(source)))
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", spy_replace)
    write_jsonl(path, [{"new": 1}, {"new": 2}])
    assert renames == [(tmp_path, path, [{"new": 1}, {"new": 2}])]
    assert read_jsonl(path) == [{"new": 1}, {"new": 2}]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "prefs.jsonl"
    write_jsonl(path, [{"label": "old"}])

    def records_that_fail_halfway():
        yield {"label": "new"}
        raise KeyboardInterrupt  # the learner pressed stop mid-write

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(path, records_that_fail_halfway())
    assert read_jsonl(path) == [{"label": "old"}]
    assert os.listdir(tmp_path) == ["prefs.jsonl"]


def test_write_rejects_unserialisable_and_non_dict_records_naming_the_index(tmp_path):
    path = tmp_path / "prefs.jsonl"
    with pytest.raises(TypeError, match=r"prefs\.jsonl: record 1 cannot be written as JSON"):
        write_jsonl(path, [{"ok": 1}, {"bad": object()}])
    with pytest.raises(TypeError, match=r"prefs\.jsonl: record 0 is a list, expected a dict"):
        write_jsonl(path, [[1, 2]])
    assert not path.exists()
    assert os.listdir(tmp_path) == []
