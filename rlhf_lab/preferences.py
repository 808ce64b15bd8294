"""Preference records and the append-only store that keeps them.

A preference is the answer to one question: "of these two answers to this prompt, which is
better?". We store it in the format most data sets and libraries (TRL, the DPO code) use:
``{"prompt", "chosen", "rejected"}``, plus who gave it and when.

The store is a JSONL file that is only ever appended to, one line per event, so that a label
is safe on disk the moment the widget moves on, a crash can at worst damage the last line, and
the file doubles as a complete log of the labelling session.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

from rlhf_lab.checkpoints import fsync_path
from rlhf_lab.jsonl import DataFormatError

try:
    import fcntl
except ImportError:  # Windows: stores on one file re-read it before each write, without a lock
    fcntl = None

SOURCES = ("human", "simulated")


class RecordError(ValueError):
    """A preference record with a bad field; `field` names it so the store can report it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field '{field}': {message}")
        self.field = field
        self.message = message


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string, e.g. '2025-01-31T12:00:00+00:00'."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_id(prompt: str, chosen: str, rejected: str, annotator: str) -> str:
    """Stable id of a label: sha256 of [prompt, chosen, rejected, annotator], first 16 hex digits.

    The same person giving the same verdict on the same pair twice gets the same id, which is
    how the store spots duplicates. Time is left out on purpose: re-labelling later is still a
    duplicate.
    """
    payload = json.dumps([prompt, chosen, rejected, annotator], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def item_key(prompt: str, answers: Iterable[str]) -> tuple[str, ...]:
    """Order-free key of a labelling item: (prompt, *sorted(answers)).

    "A vs B" and "B vs A" are the same question, so a widget that sees either as already
    labelled can skip it when the learner resumes.
    """
    return (prompt, *sorted(answers))


@dataclass
class PreferenceRecord:
    """One human (or simulated-human) judgement: `chosen` is better than `rejected` for `prompt`.

    `tie=True` means "equally good"; `chosen`/`rejected` then just keep the order shown. The two
    answers must differ. One of them may be empty: a policy that ends its answer at once says
    nothing, and the labeller judges that too (the shipped labels hold such pairs).
    `ranking` is set when the pair comes from ranking K answers: the full order, best first.
    `id` is computed from prompt/chosen/rejected/annotator (see `record_id`); leave it empty.
    """

    prompt: str
    chosen: str
    rejected: str
    source: str = "human"
    annotator: str = "learner"
    time: str = field(default_factory=utc_now)
    tie: bool = False
    ranking: list[str] | None = None
    id: str = ""

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected", "annotator", "time", "id"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise RecordError(name, f"expected a string, got {value!r}")
        if not self.prompt.strip():
            raise RecordError("prompt", "empty: a label needs the prompt both answers reply to")
        if self.chosen == self.rejected:
            raise RecordError("rejected", "the same answer as 'chosen': a label compares two different answers")
        if self.source not in SOURCES:
            raise RecordError("source", f"expected one of {SOURCES}, got {self.source!r}")
        try:
            parsed = datetime.fromisoformat(self.time.replace("Z", "+00:00"))
        except ValueError:
            raise RecordError("time", f"not an ISO 8601 time: {self.time!r}") from None
        if parsed.utcoffset() is None or parsed.utcoffset().total_seconds() != 0:
            raise RecordError("time", f"expected a UTC time (ending in +00:00 or Z), got {self.time!r}")
        if not isinstance(self.tie, bool):
            raise RecordError("tie", f"expected true or false, got {self.tie!r}")
        if self.ranking is not None:
            self.ranking = _checked_ranking(self.ranking, self.chosen, self.rejected)
        expected_id = record_id(self.prompt, self.chosen, self.rejected, self.annotator)
        if self.id and self.id != expected_id:
            # An edited record whose id no longer matches would defeat duplicate detection.
            raise RecordError("id", f"{self.id!r} does not match the record's content (expected {expected_id!r})")
        self.id = expected_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> PreferenceRecord:
        """Build a record from a JSON object; raises RecordError naming the bad field."""
        if not isinstance(data, dict):
            raise TypeError(f"expected a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for name in data:
            if name not in known:
                raise RecordError(name, f"unexpected field (known fields: {', '.join(sorted(known))})")
        for name in ("prompt", "chosen", "rejected", "source", "annotator", "time"):
            if name not in data:
                raise RecordError(name, "missing")
        return cls(**data)


def _checked_ranking(ranking: Any, chosen: str, rejected: str) -> list[str]:
    if not isinstance(ranking, list) or not all(isinstance(answer, str) for answer in ranking):
        raise RecordError("ranking", f"expected a list of strings or null, got {ranking!r}")
    if len(set(ranking)) != len(ranking) or len(ranking) < 2:
        raise RecordError("ranking", "expected at least two different answers, each once")
    if chosen not in ranking or rejected not in ranking or ranking.index(chosen) > ranking.index(rejected):
        raise RecordError("ranking", "must contain 'chosen' ranked above 'rejected'")
    return list(ranking)


def ranking_to_pairs(prompt: str, ranking: Sequence[str], **record_fields: Any) -> list[PreferenceRecord]:
    """All C(K, 2) (better, worse) pairs of one ranking of K answers, best first.

    ranking [a, b, c] -> (a > b), (a > c), (b > c). Each pair keeps the full ranking, so the
    reward model can also be trained on the K-wise (Plackett-Luce) form if wanted.
    `record_fields` (source, annotator, time, ...) are passed to every PreferenceRecord.
    """
    ranking = list(ranking)
    if len(ranking) < 2 or len(set(ranking)) != len(ranking):
        raise ValueError(f"a ranking needs at least two different answers, got {ranking!r}")
    return [
        PreferenceRecord(prompt=prompt, chosen=better, rejected=worse, ranking=ranking, **record_fields)
        for better, worse in combinations(ranking, 2)
    ]


class PreferenceStore:
    """Preference labels in an append-only JSONL file that survives crashes and shared use.

    File format, one JSON object per line:
      - a record line: ``PreferenceRecord.to_dict()``;
      - an undo line (tombstone): ``{"undo": "<id>"}`` or ``{"undo": ["<id>", ...]}``.
    Opening the file replays the lines in order, so the current records are "everything added,
    minus what a later tombstone removed". Nothing is ever rewritten:

      - `add` returns only after the line is flushed and `os.fsync`-ed, so killing the kernel
        loses at most the click in flight;
      - undo is an appended tombstone, not an edit, so it is as durable as a label and the file
        keeps the full history (what was labelled, then taken back);
      - malformed lines are reported (a warning each and `store.errors`) and skipped, never
        deleted: the file is evidence, and its owner decides how to fix it;
      - a last line cut short by a crash (no newline, not JSON: never a confirmed label) is set
        aside: moved to `NAME.incomplete` beside the file and reported once (a warning and
        `store.set_aside`), so a crash never blocks the next session;
      - several stores may share one file (two notebook kernels, the command line): every write
        takes a lock on the file (fcntl, where the system has it) and first re-reads what others
        appended, so a label is never refused as "already stored" when another store has undone
        it, nor stored twice. Reading (`records`, `len`) shows the file as of this store's last
        read or write; `refresh()` re-reads it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.errors: list[str] = []  # the file's bad lines, as of the last read
        self.set_aside: list[str] = []  # incomplete last lines this store moved to the side file
        self._records: dict[str, PreferenceRecord] = {}  # by id, in the order they were added
        self._seen: tuple | None = None  # the file's identity and size when this store last read or wrote it
        self._warned: set[str] = set()
        self.refresh()

    # ----- reading -----

    def refresh(self) -> None:
        """Re-read the file if anyone (another store, another process) changed it since this store did."""
        if not self.path.exists():
            self._records, self.errors, self._seen = {}, [], None
            return
        with _locked(self.path, write=False) as (file, may_set_aside):
            self._catch_up(file, may_set_aside)

    def _catch_up(self, file, may_set_aside: bool) -> None:
        """With the file locked: replay it again if it is not as this store last left it."""
        if _identity(file) != self._seen:
            self._replay(file, may_set_aside)

    def _replay(self, file, may_set_aside: bool) -> None:
        """Rebuild the current records from every line of the file."""
        file.seek(0)
        lines = file.read().split(b"\n")
        self._records, self.errors = {}, []
        # After a final newline split() leaves b""; anything else there is an unfinished write.
        *finished_lines, last_line = lines
        for number, raw in enumerate(finished_lines, start=1):
            if raw.strip():
                self._apply_line(number, raw)
        if last_line.strip():
            if may_set_aside and not _is_json(last_line):
                self._set_aside(file, last_line, len(lines))
            else:
                self._apply_line(len(lines), last_line, unfinished=True)
        self._seen = _identity(file)

    def _set_aside(self, file, fragment: bytes, line_number: int) -> None:
        """Move a crash's fragment (the file's unfinished last line) to the side file, then cut it off."""
        side_file = self.path.with_name(self.path.name + ".incomplete")
        with open(side_file, "ab") as side:
            side.write(fragment + b"\n")
            side.flush()
            os.fsync(side.fileno())
        file.truncate(os.fstat(file.fileno()).st_size - len(fragment))
        file.flush()
        os.fsync(file.fileno())
        message = (f"{self.path}, line {line_number}: moved an incomplete last line (a write cut short by a crash, "
                   f"never a confirmed label) to {side_file}: {fragment[:60]!r}")
        self.set_aside.append(message)
        self._warn(message)

    def _apply_line(self, number: int, raw: bytes, unfinished: bool = False) -> None:
        """Apply one line (a record or a tombstone) to the current records, or report it."""
        try:
            data = json.loads(raw.decode("utf-8-sig"))  # -sig: tolerate a byte-order mark, as the data files do
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if unfinished:
                self._report(number, None, f"incomplete last line (no newline at the end; "
                             f"probably an interrupted write): {raw[:60]!r}")
            elif isinstance(error, UnicodeDecodeError):
                self._report(number, None, f"not valid UTF-8 text ({error.reason})")
            else:
                self._report(number, None, f"invalid JSON ({error.msg} at column {error.colno})")
            return
        if isinstance(data, dict) and "undo" in data:
            undone_ids = data["undo"] if isinstance(data["undo"], list) else [data["undo"]]
            if len(data) != 1 or not all(isinstance(undone, str) for undone in undone_ids):
                self._report(number, "undo", f'expected {{"undo": id or [ids]}}, got {data!r}')
                return
            for undone in undone_ids:
                if self._records.pop(undone, None) is None:
                    self._report(number, "undo", f"no current record with id {undone!r}")
            return
        if not isinstance(data, dict):
            self._report(number, None, f"expected a JSON object {{...}}, got {type(data).__name__}")
            return
        try:
            record = PreferenceRecord.from_dict(data)
        except RecordError as error:
            self._report(number, error.field, error.message)
            return
        self._records[record.id] = record

    def _report(self, line_number: int, field_name: str | None, problem: str) -> None:
        # The same message format as every other data file: "path, line N, field 'x': problem".
        error = str(DataFormatError(self.path, line_number, field_name, problem))
        self.errors.append(error)
        self._warn(f"skipped a bad preference line: {error}")

    def _warn(self, message: str) -> None:
        """A warning pointing at the caller's line; each message once per store (re-reading repeats none)."""
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=_stacklevel_outside_this_module())

    @property
    def records(self) -> list[PreferenceRecord]:
        """The current records (added and not undone), oldest first."""
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[PreferenceRecord]:
        return iter(self.records)

    def __contains__(self, record_or_id: PreferenceRecord | str) -> bool:
        record_id_ = record_or_id.id if isinstance(record_or_id, PreferenceRecord) else record_or_id
        return record_id_ in self._records

    def labelled_keys(self, annotator: str | None = None) -> set[tuple[str, ...]]:
        """`item_key`s of everything labelled (by `annotator`, if given): pairs and whole rankings."""
        keys = set()
        for record in self._records.values():
            if annotator is None or record.annotator == annotator:
                keys.add(item_key(record.prompt, (record.chosen, record.rejected)))
                if record.ranking is not None:
                    keys.add(item_key(record.prompt, record.ranking))
        return keys

    def to_dataframe(self):
        """The current records as a pandas DataFrame, one row per record."""
        import pandas as pd  # only needed here; keeps the store importable without pandas

        columns = [f.name for f in fields(PreferenceRecord)]
        return pd.DataFrame([record.to_dict() for record in self._records.values()], columns=columns)

    # ----- writing -----

    def add(self, record: PreferenceRecord) -> bool:
        """Append one record durably; False (and nothing written) if its id is already stored."""
        return self.add_many([record])[0]

    def add_many(self, records: Sequence[PreferenceRecord]) -> list[bool]:
        """Append several records with one write and one fsync (e.g. all pairs of a ranking).

        Returns, for each record, whether it was written (False: its id is already in the file).
        """
        for record in records:
            if not isinstance(record, PreferenceRecord):
                raise TypeError(f"expected a PreferenceRecord, got {type(record).__name__}")
        with self._writing() as file:
            written, new_ids = [], set()
            for record in records:
                is_new = record.id not in self._records and record.id not in new_ids
                written.append(is_new)
                new_ids.add(record.id)
            new_records = [record for record, is_new in zip(records, written) if is_new]
            if new_records:
                self._append(file, [json.dumps(record.to_dict(), ensure_ascii=False) for record in new_records])
                self._records.update((record.id, record) for record in new_records)
        return written

    def undo(self, ids: str | Sequence[str]) -> list[PreferenceRecord]:
        """Take back the records with these ids by appending one tombstone line; returns them."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        self.refresh()
        if not any(undone in self._records for undone in ids):
            return []
        with self._writing() as file:
            ids = [undone for undone in dict.fromkeys(ids) if undone in self._records]
            if ids:
                self._append(file, [json.dumps({"undo": ids[0] if len(ids) == 1 else ids})])
            return [self._records.pop(undone) for undone in ids]

    def undo_last(self, annotator: str | None = None) -> PreferenceRecord | None:
        """Take back the most recent record (of `annotator`, if given); None if there is none."""
        self.refresh()
        for record in reversed(self._records.values()):
            if annotator is None or record.annotator == annotator:
                undone = self.undo(record.id)
                return undone[0] if undone else None
        return None

    @contextlib.contextmanager
    def _writing(self):
        """The file, locked and caught up with what other stores wrote: decide, then `_append`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        is_new_file = not self.path.exists()
        with _locked(self.path, write=True) as (file, may_set_aside):
            self._catch_up(file, may_set_aside)
            yield file
        if is_new_file:
            fsync_path(self.path.parent)  # so the new file's name itself survives a crash

    def _append(self, file, lines: list[str]) -> None:
        """Append lines and fsync before returning: once this returns, the lines survive a crash."""
        # A last line without its newline (a record an editor saved so, or a fragment that could not be
        # set aside) gets one first, so that it stays one line instead of gluing onto our good one.
        size = os.fstat(file.fileno()).st_size
        prefix = b""
        if size > 0:
            file.seek(size - 1)
            if file.read(1) != b"\n":
                prefix = b"\n"
        file.write(prefix + "".join(line + "\n" for line in lines).encode("utf-8"))
        file.flush()
        os.fsync(file.fileno())
        self._seen = _identity(file)

    def __repr__(self) -> str:
        return f"PreferenceStore({str(self.path)!r}, {len(self)} records, {len(self.errors)} errors)"


@contextlib.contextmanager
def _locked(path: Path, write: bool):
    """`(file, locked)`: the file opened for reading and appending, with an exclusive lock where the
    system has fcntl (released on close). A file we may not write (e.g. shipped read-only data) is
    opened for reading only, when `write` is False; `locked` then says False and nothing is changed."""
    try:
        file = open(path, "ab+")
    except OSError:  # no permission, a read-only file system
        if write:
            raise
        file = open(path, "rb")
    with file:
        locked = False
        if fcntl is not None and file.writable():
            with contextlib.suppress(OSError):  # e.g. a network drive without locks
                fcntl.flock(file.fileno(), fcntl.LOCK_EX)
                locked = True
        yield file, locked


def _identity(file) -> tuple:
    """What changes whenever anyone writes to (or replaces) the file."""
    status = os.fstat(file.fileno())
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def _stacklevel_outside_this_module() -> int:
    """`stacklevel` for warnings.warn that points at the first caller outside this module."""
    frame, level = inspect.currentframe().f_back, 1
    while frame is not None and frame.f_code.co_filename in (__file__, contextlib.__file__):
        frame, level = frame.f_back, level + 1
    return level


def read_preference_file(path: str | os.PathLike) -> PreferenceStore:
    """The store of a preference file that training reads: it must exist and hold records."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such preference file" + (" (it is a folder)" if path.is_dir() else ""))
    store = PreferenceStore(path)
    if not len(store):
        raise ValueError(f"{path}: no preference records; make some with "
                         "python -m rlhf_lab label --simulate 6000 --policy DIR --out FILE")
    return store


def check_preference_file(path: str | os.PathLike) -> None:
    """Refuse a file that holds anything but preference records, before appending labels to it.

    `label --out data/world/sft.jsonl` must not turn a data file into a mix of two formats: the
    first non-blank line of an existing file has to be a preference record or an undo line.
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                data = None
            if isinstance(data, dict) and ("undo" in data or {"prompt", "chosen", "rejected"} <= set(data)):
                return
            found = f"fields {sorted(data)}" if isinstance(data, dict) else "not a JSON object"
            raise ValueError(f"{path}, line {number}: not a preference file ({found}); "
                             "labels go into a file of preference records: choose another --out")
