"""The preference record and its append-only, crash-safe store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from itertools import combinations
from pathlib import Path

import pytest

from rlhf_lab.preferences import (
    PreferenceRecord,
    PreferenceStore,
    RecordError,
    item_key,
    ranking_to_pairs,
    record_id,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_record(n: int = 0, **overrides) -> PreferenceRecord:
    fields = dict(prompt=f"What is {n} plus 1?", chosen=f"{n} plus 1 is {n + 1}.", rejected="I don't know.")
    fields.update(overrides)
    return PreferenceRecord(**fields)


def file_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# ----- the record -----


def test_record_round_trip_and_stable_id():
    record = make_record(3, annotator="ada", source="simulated", tie=True)
    data = json.loads(json.dumps(record.to_dict()))
    assert PreferenceRecord.from_dict(data) == record
    assert record.id == record_id(record.prompt, record.chosen, record.rejected, "ada")
    # The id ignores the time (re-labelling later is a duplicate) but not the annotator or the order.
    assert make_record(3, annotator="ada", time="2020-01-01T00:00:00+00:00").id == record.id
    assert make_record(3, annotator="bob").id != record.id
    swapped = make_record(3, annotator="ada", chosen=record.rejected, rejected=record.chosen)
    assert swapped.id != record.id
    assert record.time.endswith("+00:00")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"prompt": None}, "prompt"),
        ({"chosen": 3}, "chosen"),
        ({"tie": "yes"}, "tie"),
        ({"source": "robot"}, "source"),
        ({"time": "yesterday"}, "time"),
        ({"time": "2024-05-01T12:00:00"}, "time"),  # no time zone: not UTC
        ({"ranking": ["I don't know.", "0 plus 1 is 1."]}, "ranking"),  # contradicts chosen > rejected
        ({"ranking": "a b"}, "ranking"),
        ({"id": "0000000000000000"}, "id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_from_dict_names_the_bad_field(change, field):
    data = make_record(0).to_dict()
    data.update(change)
    with pytest.raises(RecordError, match=f"field '{field}'") as caught:
        PreferenceRecord.from_dict(data)
    assert caught.value.field == field


def test_from_dict_reports_missing_field():
    data = make_record(0).to_dict()
    del data["rejected"]
    with pytest.raises(RecordError, match="field 'rejected': missing"):
        PreferenceRecord.from_dict(data)


def test_ranking_to_pairs_gives_all_ordered_pairs():
    ranking = ["best", "good", "meh", "bad"]
    records = ranking_to_pairs("Say hi.", ranking, annotator="ada", source="simulated")
    assert [(record.chosen, record.rejected) for record in records] == list(combinations(ranking, 2))
    assert len(records) == 6  # C(4, 2)
    assert all(record.ranking == ranking and record.annotator == "ada" for record in records)
    assert len({record.id for record in records}) == 6
    with pytest.raises(ValueError):
        ranking_to_pairs("Say hi.", ["same", "same"])
    with pytest.raises(ValueError):
        ranking_to_pairs("Say hi.", ["alone"])


# ----- the store -----


def test_store_round_trip(tmp_path):
    path = tmp_path / "sub" / "prefs.jsonl"  # the folder is created on first add
    store = PreferenceStore(path)
    assert len(store) == 0 and store.errors == []
    records = [make_record(n) for n in range(3)] + ranking_to_pairs("Rank these.", ["x", "y", "z"])
    for record in records:
        assert store.add(record) is True
    assert len(file_lines(path)) == 6

    reopened = PreferenceStore(path)
    assert reopened.records == records
    assert reopened.errors == []
    first = records[0]
    assert (reopened.records[0].prompt, reopened.records[0].chosen) == (first.prompt, first.chosen)
    frame = reopened.to_dataframe()
    assert list(frame["chosen"]) == [record.chosen for record in records]
    assert {"prompt", "chosen", "rejected", "source", "annotator", "time", "tie", "ranking", "id"} <= set(frame.columns)


def test_duplicates_are_rejected_and_not_written(tmp_path):
    path = tmp_path / "prefs.jsonl"
    store = PreferenceStore(path)
    assert store.add(make_record(1))
    before = path.read_bytes()
    assert store.add(make_record(1)) is False
    assert PreferenceStore(path).add(make_record(1)) is False  # also after reopening
    assert store.add_many([make_record(1), make_record(2), make_record(2)]) == [False, True, False]
    assert path.read_bytes().startswith(before)
    assert len(file_lines(path)) == 2
    assert store.add(make_record(1, annotator="bob")) is True  # another annotator's opinion counts


def test_undo_is_durable_append_only_and_reversible(tmp_path):
    path = tmp_path / "prefs.jsonl"
    store = PreferenceStore(path)
    first, second, third = make_record(1), make_record(2, annotator="bob"), make_record(3)
    for record in (first, second, third):
        store.add(record)
    before = path.read_bytes()

    assert store.undo_last(annotator="bob") == second
    assert store.records == [first, third]
    assert store.undo_last() == third
    assert path.read_bytes().startswith(before)  # appended, never rewritten
    assert [json.loads(line) for line in file_lines(path)[3:]] == [{"undo": second.id}, {"undo": third.id}]

    reopened = PreferenceStore(path)
    assert reopened.records == [first]
    assert reopened.errors == []
    assert reopened.undo_last(annotator="nobody") is None
    # After an undo the same label may be given again, and it is current again after reopening.
    assert reopened.add(make_record(3)) is True
    assert [record.id for record in PreferenceStore(path).records] == [first.id, third.id]


def test_undo_of_a_whole_ranking_is_one_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    store = PreferenceStore(path)
    pairs = ranking_to_pairs("Rank these.", ["x", "y", "z"])
    store.add_many(pairs)
    assert store.undo([record.id for record in pairs]) == pairs
    assert len(store) == 0
    assert json.loads(file_lines(path)[-1]) == {"undo": [record.id for record in pairs]}
    assert len(PreferenceStore(path)) == 0


def test_training_pairs_leave_out_ties_and_weight_the_learner(tmp_path):
    from rlhf_lab.reward import pairs_from_records

    store = PreferenceStore(tmp_path / "prefs.jsonl")
    store.add(make_record(1))
    store.add(make_record(2, tie=True))
    pairs = pairs_from_records(PreferenceStore(store.path).records, learner_weight=2.0)
    assert [pair["prompt"] for pair in pairs] == [make_record(1).prompt]
    assert pairs[0]["weight"] == (2.0 if make_record(1).source == "human" else 1.0)


def test_labelled_keys_ignore_answer_order_and_include_rankings(tmp_path):
    store = PreferenceStore(tmp_path / "prefs.jsonl")
    store.add(PreferenceRecord("p", chosen="b", rejected="a", annotator="ada"))
    store.add_many(ranking_to_pairs("q", ["z", "x", "y"], annotator="bob"))
    assert item_key("p", ["a", "b"]) in store.labelled_keys()
    assert item_key("q", ["x", "y", "z"]) in store.labelled_keys("bob")
    assert item_key("q", ["x", "y", "z"]) not in store.labelled_keys("ada")
    assert item_key("p", ["a", "c"]) not in store.labelled_keys()


def test_malformed_lines_are_reported_and_the_file_is_left_alone(tmp_path):
    path = tmp_path / "prefs.jsonl"
    good = [make_record(n) for n in range(3)]
    wrong_type = make_record(7).to_dict() | {"tie": "maybe"}
    missing_field = make_record(8).to_dict()
    del missing_field["chosen"]
    lines = [
        json.dumps(good[0].to_dict()),  # line 1
        "{not json",  # line 2
        json.dumps(missing_field),  # line 3
        "",  # line 4: blank lines are fine
        json.dumps(wrong_type),  # line 5
        json.dumps(good[1].to_dict()),  # line 6
        '["a", "list"]',  # line 7
        json.dumps({"undo": "no-such-id"}),  # line 8
        json.dumps(good[2].to_dict()),  # line 9
    ]
    truncated = json.dumps(make_record(9).to_dict())[:40]  # line 10: a crash mid-write
    path.write_text("\n".join(lines) + "\n" + truncated, encoding="utf-8")
    before = path.read_bytes()

    with pytest.warns(UserWarning) as warned:
        store = PreferenceStore(path)

    assert store.records == good
    # The bad lines stay where they are; only the crash's fragment moves, to the side file.
    assert path.read_bytes() == before[: -len(truncated)]
    assert (tmp_path / "prefs.jsonl.incomplete").read_text(encoding="utf-8") == truncated + "\n"
    # Problems with a whole line (not JSON, not an object) name no field.
    expected = [(2, None), (3, "chosen"), (5, "tie"), (7, None), (8, "undo")]
    assert len(store.errors) == len(expected)
    for error, (line, field) in zip(store.errors, expected):
        where = f"{path}, line {line}" + ("" if field is None else f", field '{field}'")
        assert error.startswith(f"{where}: "), error
    assert len(store.set_aside) == 1 and store.set_aside[0].startswith(f"{path}, line 10: moved an incomplete")
    assert len(warned) == len(expected) + 1
    assert all(str(path) in str(warning.message) for warning in warned)


def test_a_truncated_last_line_is_set_aside_and_reported_once(tmp_path):
    path = tmp_path / "prefs.jsonl"
    first = make_record(1)
    path.write_text(json.dumps(first.to_dict()) + "\n" + '{"prompt": "half a rec', encoding="utf-8")
    with pytest.warns(UserWarning, match="moved an incomplete last line"):
        store = PreferenceStore(path)
    assert store.errors == [] and store.records == [first]  # nothing left to block a lesson
    second = make_record(2)
    assert store.add(second)
    assert file_lines(path) == [json.dumps(first.to_dict()), json.dumps(second.to_dict())]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once: opening again warns about nothing
        reopened = PreferenceStore(path)
    assert reopened.records == [first, second] and reopened.errors == reopened.set_aside == []
    assert (tmp_path / "prefs.jsonl.incomplete").read_text(encoding="utf-8") == '{"prompt": "half a rec\n'


def test_without_a_lock_a_truncated_last_line_stays_and_the_next_append_starts_a_fresh_line(tmp_path, monkeypatch):
    from rlhf_lab import preferences

    monkeypatch.setattr(preferences, "fcntl", None)  # e.g. Windows: another writer may be mid-line, so leave it
    path = tmp_path / "prefs.jsonl"
    first = make_record(1)
    path.write_text(json.dumps(first.to_dict()) + "\n" + '{"prompt": "half a rec', encoding="utf-8")
    with pytest.warns(UserWarning):
        store = PreferenceStore(path)
    second = make_record(2)
    assert store.add(second)
    assert path.read_text(encoding="utf-8").startswith(json.dumps(first.to_dict()) + "\n" + '{"prompt": "half a rec\n')

    with pytest.warns(UserWarning):
        reopened = PreferenceStore(path)
    assert reopened.records == [first, second]
    assert len(reopened.errors) == 1 and f"{path}, line 2: invalid JSON" in reopened.errors[0]


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(make_record(1).to_dict()), encoding="utf-8")  # e.g. saved by an editor
    store = PreferenceStore(path)
    assert store.errors == [] and len(store) == 1
    store.add(make_record(2))
    assert len(PreferenceStore(path).records) == 2


CHILD = textwrap.dedent(
    """
    import sys, time
    from rlhf_lab.preferences import PreferenceRecord, PreferenceStore

    store = PreferenceStore(sys.argv[1])
    for n in range(10_000):
        store.add(PreferenceRecord(prompt=f"prompt {n}", chosen="good", rejected="bad"))
        print(f"confirmed {n}", flush=True)
        time.sleep(0.005)
    """
)


def test_every_confirmed_label_survives_sigkill(tmp_path):
    path = tmp_path / "prefs.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    confirmed = []
    try:
        deadline = time.monotonic() + 60
        while len(confirmed) < 20 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            confirmed.append(int(line.split()[1]))
        assert child.poll() is None, f"child ended early: {child.stderr.read()}"
        child.send_signal(signal.SIGKILL)  # mid-way: no chance to flush or clean up
    finally:
        child.kill()
        rest, errors = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    confirmed += [int(line.split()[1]) for line in rest.splitlines()]
    assert len(confirmed) >= 20, errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # at worst a half-written last line, which is reported
        store = PreferenceStore(path)
    stored_prompts = {record.prompt for record in store.records}
    assert {f"prompt {n}" for n in confirmed} <= stored_prompts
