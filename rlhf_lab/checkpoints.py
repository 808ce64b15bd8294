"""Checkpoint folders: written all at once, and checked before anything reads them.

A checkpoint is a folder of files that only make sense together (config.json, model.safetensors,
the tokenizer's files; PPO adds the critic, the optimizers and its state). Written file by file in
place, a crash or a full disk halfway through leaves a mix: a config.json without weights, or the
weights of iteration 4 beside the critic of iteration 2. So every save goes through `atomic_folder`:

1. every file is written into a staging folder beside the target, `.NAME.new-STAMP` (beside it, so
   that it is on the same file system: only there is a rename atomic);
2. `checkpoint.json`, listing each file and its size, is written last: a staging folder without
   it is unfinished;
3. everything is flushed to disk (fsync), then the folder is moved into place with two renames:

       TARGET -> .NAME.old-STAMP        (when TARGET exists)
       .NAME.new-STAMP -> TARGET
       delete .NAME.old-STAMP

A reader therefore sees the old checkpoint or the new one, never a mix. Between the two renames
TARGET is missing for a moment; a crash right then leaves both complete folders beside it, and
`recover` (run by `check_checkpoint`, so by every loader, and by every save) moves the finished new
one into place, or else the old one back. Saves of one target take turns (a lock on the file
`.NAME.lock`, where the system has `fcntl`), so recovery never mistakes a running save for a dead one.

Because a save replaces the whole folder, it refuses a folder that holds anything but a checkpoint
or a run's files (`check_replaceable`): `--out artifacts` must not delete every other run.

Why not versioned subfolders behind a pointer (a symlink swapped atomically)? Hugging Face's
`from_pretrained(TARGET)`, TRL and Google Drive all expect TARGET to be a plain folder of files.
The price of a staging copy is disk space: replacing a checkpoint needs room for two.

`check_checkpoint` accepts only a complete checkpoint: the files its kind needs are all there,
every JSON file parses, every safetensors file's header parses and the file is exactly as long as
the header says, and every file `checkpoint.json` lists still has its recorded size. `check_weights`
also compares each tensor's shape with the model config.json describes. A problem raises
`CheckpointError`, whose message starts with the file's path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import struct
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: saves of one target do not take turns
    fcntl = None

MANIFEST = "checkpoint.json"
# What each kind of checkpoint must hold; "a|b" means either file.
POLICY_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
REQUIRED_FILES = {
    "policy": POLICY_FILES,
    "reward": POLICY_FILES,
    "ppo": POLICY_FILES + ("critic.safetensors", "policy_optimizer.safetensors", "critic_optimizer.safetensors",
                           "history.csv", "ppo_state.json|trainer_state.json"),
    "best-of-n": ("best_of_n.json",),
}
# A folder holding one of these is a checkpoint or a run's output, which a save may replace.
RUN_FILES = ("config.json", "metrics.json", "best_of_n.json", MANIFEST)
# Bytes per element of each safetensors dtype (to check that every tensor's bytes are all there).
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# Errors of a full or read-only disk: the message then says what was kept.
DISK_ERRORS = {"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG"}

_open_staging: set[Path] = set()  # staging folders of saves in progress in this process


class CheckpointError(ValueError):
    """A checkpoint file that is missing, cut short or unreadable; the message starts with its path."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):
        return (CheckpointError, (self.path, self.problem))


# =====================================================================================
# Writing: a staging folder, renamed into place.
# =====================================================================================


def _sibling(target: Path, state: str) -> Path:
    """`.NAME.new-STAMP` or `.NAME.old-STAMP` beside the target; stamps sort by time."""
    return target.with_name(f".{target.name}.{state}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}")


def _siblings(target: Path, state: str) -> list[Path]:
    """The target's leftover staging (`new`) or set-aside (`old`) folders, oldest first."""
    if not target.parent.is_dir():
        return []
    return sorted(target.parent.glob(f".{target.name}.{state}-*"))


@contextlib.contextmanager
def _turn(target: Path):
    """Hold the lock of `target` (the file `.NAME.lock` beside it) so that its saves take turns.

    Without fcntl, or where the lock file cannot be made (a read-only folder, some network
    drives), this does nothing: the renames are still atomic, only two simultaneous saves of one
    target are not kept apart.
    """
    lock = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            lock = open(target.with_name(f".{target.name}.lock"), "a")
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        if lock is not None:
            lock.close()  # closing releases the lock


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its list of names) to disk; folders cannot be opened everywhere."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _link_or_copy(source: Path, destination: Path) -> None:
    """A hard link (instant, no extra space), or a copy where the file system has none."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def write_manifest(folder: Path) -> None:
    """`checkpoint.json`: every file of the folder and its size, and when it was written. Written last."""
    files = {path.name: path.stat().st_size for path in sorted(folder.iterdir())
             if path.is_file() and path.name != MANIFEST}
    manifest = {"files": files, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "id": uuid.uuid4().hex}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished staging folder to `target`, setting an existing target aside first."""
    for path in staging.iterdir():
        fsync_path(path)
    fsync_path(staging)
    aside = None
    if target.exists():
        aside = _sibling(target, "old")
        os.rename(target, aside)
    try:
        os.rename(staging, target)
    except OSError:
        if aside is not None:
            os.rename(aside, target)  # put the old one back at once
        raise
    fsync_path(target.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _disk_error(error: OSError, target: Path, had_target: bool) -> OSError:
    """The same error, saying which save failed and that nothing already saved was touched."""
    kept = "the checkpoint already there is unchanged" if had_target else "nothing was saved there"
    code = error.errno if error.errno is not None else errno.EIO
    return OSError(code, f"could not save {target}: {error.strerror or error}; {kept}")


def check_replaceable(target: str | os.PathLike) -> None:
    """Refuse a folder a save must not replace: one that holds folders, or files but no checkpoint or
    run (no config.json, metrics.json, best_of_n.json or checkpoint.json). A save replaces the whole
    folder, so `--out artifacts` (instead of `artifacts/sft`) would otherwise delete every other run."""
    target = Path(target)
    entries = [path for path in target.iterdir() if not path.name.startswith(".")] if target.is_dir() else []
    folders = [path.name for path in entries if path.is_dir()]
    if entries and (folders or not any((target / name).is_file() for name in RUN_FILES)):
        what = f"folders (e.g. {folders[0]})" if folders else f"files but no checkpoint (e.g. {entries[0].name})"
        raise ValueError(f"{target} holds {what}; a save replaces the whole folder, so choose a new or empty one "
                         f"(e.g. {target / 'run'})")


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, keep_existing: bool = False, drop: Iterable[str] = ()):
    """`with atomic_folder(TARGET) as folder:` write the files into `folder`; on leaving the block
    they replace TARGET all at once (see the module docstring). An error inside the block, or a
    crash, leaves TARGET as it was.

    `keep_existing=True` adds files to a checkpoint instead of replacing it: TARGET's files that
    the block did not write (and that are not in `drop`) are carried over (hard links, no copy).
    Inside another save's block, a save into that block's folder just writes there: it becomes
    part of the enclosing save (e.g. `PPOTrainer.save` calls `save_policy` on its folder).
    """
    target = Path(target)
    if target.resolve() in _open_staging:
        yield target
        return
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} is a file; a checkpoint is a folder")
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _turn(target):
        _recover(target, clean=True)
        had_target, staging = target.is_dir(), _sibling(target, "new")
        staging.mkdir()
        _open_staging.add(staging.resolve())
        try:
            yield staging
            if keep_existing and had_target:
                for path in target.iterdir():
                    if path.is_file() and path.name not in {MANIFEST, *drop} and not (staging / path.name).exists():
                        _link_or_copy(path, staging / path.name)
            write_manifest(staging)
            _move_into_place(staging, target)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            system_error = _system_error(error)
            if system_error is not None and _errno_name(system_error) in DISK_ERRORS:
                raise _disk_error(system_error, target, had_target) from error
            raise
        finally:
            _open_staging.discard(staging.resolve())


def _system_error(error: BaseException) -> OSError | None:
    """The OSError behind an error: itself, or one that safetensors' Rust writer reports as text
    ("... No space left on device (os error 28)")."""
    if isinstance(error, OSError):
        return error
    found = re.search(r"\(os error (\d+)\)", str(error)) if isinstance(error, Exception) else None
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


def _errno_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno, "") if error.errno is not None else ""


def write_json(path: str | os.PathLike, value) -> None:
    """One JSON file, atomically: a temporary file beside it, flushed, then renamed over it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as file:
            file.write(json.dumps(value, indent=2) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# =====================================================================================
# Recovering from a save that was cut short.
# =====================================================================================


def _recover(target: Path, clean: bool) -> str | None:
    """With the target's lock held: finish or roll back an interrupted save; `clean` also deletes
    the leftovers of dead saves (only a save may: it holds the lock for its whole duration)."""
    finished = [path for path in _siblings(target, "new") if (path / MANIFEST).is_file()]
    set_aside = _siblings(target, "old")
    message = None
    if not target.exists() and (finished or set_aside):
        # The newest finished save was the last to start its final rename; an "old" folder is only
        # set aside right before a finished one is renamed into place.
        restored = finished[-1] if finished else set_aside[-1]
        os.rename(restored, target)
        fsync_path(target.parent)
        what = "finished the save that was interrupted" if finished else "restored the previous checkpoint"
        message = f"{target}: a save was interrupted; {what} (from {restored.name})"
    if clean:
        for leftover in _siblings(target, "new") + _siblings(target, "old"):
            shutil.rmtree(leftover, ignore_errors=True)
    return message


def recover(target: str | os.PathLike) -> str | None:
    """Finish (or roll back) a save of `target` that a crash interrupted between its two renames.

    Returns what was done, or None when there was nothing to do (the usual case, which costs one
    listing of the parent folder). Leftover unfinished staging folders are left for the next save,
    which deletes them.
    """
    target = Path(target)
    if target.exists() or not (_siblings(target, "new") or _siblings(target, "old")):
        return None
    with _turn(target):
        return _recover(target, clean=False)


# =====================================================================================
# Checking: every file there, every file whole.
# =====================================================================================


def read_json(path: str | os.PathLike):
    """The JSON value in a file; a missing, empty or malformed file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "missing")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise CheckpointError(path, f"not UTF-8 text ({error.reason})") from None
    if not text.strip():
        raise CheckpointError(path, "empty file (expected JSON)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(path, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") \
            from None


def safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """The tensors of a safetensors file (`{name: {"dtype", "shape", "data_offsets"}}`), after
    checking that the file is exactly as long as its header says: a file cut short is refused.

    Layout: 8 bytes (little-endian length N), N bytes of JSON header, then the tensors' bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "missing")
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointError(path, f"{'empty' if size == 0 else 'cut short'}: {size} bytes, no safetensors header")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > size - 8:
            raise CheckpointError(path, f"cut short: its header needs {header_length} bytes, the file has {size - 8}")
        try:
            header = json.loads(file.read(header_length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(path, "not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "not a safetensors file (its header is not a JSON object)")
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    end = _check_tensor_entries(path, tensors)
    if size != 8 + header_length + end:
        raise CheckpointError(path, f"{'cut short' if size < 8 + header_length + end else 'too long'}: "
                                    f"{size} bytes, its header describes {8 + header_length + end}")
    return tensors


def _check_tensor_entries(path: Path, tensors: dict) -> int:
    """Check each header entry (its byte count matches dtype x shape); returns where the data ends."""
    end = 0
    for name, entry in tensors.items():
        try:
            start, stop = entry["data_offsets"]
            elements = 1
            for dimension in entry["shape"]:
                elements *= int(dimension)
            expected = DTYPE_BYTES.get(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(path, f"malformed safetensors header entry {name!r}") from None
        if expected is not None and stop - start != expected * elements:
            raise CheckpointError(path, f"tensor {name!r}: {stop - start} bytes for shape {entry['shape']}")
        end = max(end, stop)
    return end


def check_checkpoint(path: str | os.PathLike, kind: str = "policy") -> Path:
    """`path`, after finishing any interrupted save of it (`recover`) and checking it is complete.

    `kind`: policy, reward, ppo (a PPO run that can be resumed) or best-of-n. Raises
    FileNotFoundError when there is no such checkpoint at all, and CheckpointError naming the first
    file that is missing, cut short or unreadable.
    """
    path = Path(path)
    finished = recover(path)
    if finished:
        warnings.warn(finished, stacklevel=2)
    required = REQUIRED_FILES[kind]
    first = required[0].split("|")[0]
    if not (path / first).is_file():
        where = "no such folder" if not path.exists() else f"no {first}"
        raise FileNotFoundError(f"no {kind} checkpoint at {path} ({where})")
    for names in required:
        if not any((path / name).is_file() for name in names.split("|")):
            raise CheckpointError(path / names.split("|")[0], f"missing (a {kind} checkpoint needs "
                                  f"{', '.join(name.replace('|', ' or ') for name in required)})")
    if (path / MANIFEST).is_file():
        _check_manifest(path)
    for file in sorted(path.iterdir()):
        if file.suffix == ".json":
            read_json(file)
        elif file.suffix == ".safetensors":
            safetensors_header(file)
    return path


def _check_manifest(path: Path) -> None:
    """Every file the manifest lists is there with the size it had when the folder was written."""
    manifest = read_json(path / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(path / MANIFEST, "expected an object with a 'files' object")
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(file, f"missing (listed in {MANIFEST})")
        if file.stat().st_size != size:
            raise CheckpointError(file, f"{file.stat().st_size} bytes, but {size} when the checkpoint was written "
                                        "(changed or cut short since)")


def check_weights(path: str | os.PathLike, build: Callable | None = None) -> None:
    """Every parameter of the model config.json describes is in model.safetensors, with its shape.

    `build(config)` makes the model (default: the class config.json names in `architectures`); it is
    built on the meta device, so no memory is allocated. Transformers itself would re-initialise a
    missing tensor at random with only a warning, and report a wrong shape as a many-line table.
    """
    import torch
    import transformers

    path = Path(path)
    try:
        config = transformers.AutoConfig.from_pretrained(path)
        build = build or getattr(transformers, (config.architectures or ["AutoModel"])[0])
        with torch.device("meta"):
            model = build(config) if build is not transformers.AutoModel else build.from_config(config)
    except (ValueError, KeyError, TypeError, OSError, AttributeError) as error:
        raise CheckpointError(path / "config.json", f"does not describe a model ({str(error).splitlines()[0]})") \
            from None
    weights = path / "model.safetensors"
    saved = {name: list(entry["shape"]) for name, entry in safetensors_header(weights).items()}
    for name, parameter in model.named_parameters():
        if name not in saved:
            raise CheckpointError(weights, f"has no tensor {name!r}, which the {type(model).__name__} of "
                                           "config.json needs")
        if saved[name] != list(parameter.shape):
            raise CheckpointError(weights, f"tensor {name!r} has shape {saved[name]}, but the model of "
                                           f"config.json needs {list(parameter.shape)}")


# =====================================================================================
# Files saved together: a state file records each part's digest.
# =====================================================================================


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_parts(folder: Path, parts: dict[str, str], state_file: Path, saved_at: str) -> None:
    """Each part's digest is the one `state_file` recorded: the parts come from one and the same save."""
    for name, digest in parts.items():
        if not (folder / name).is_file():
            raise CheckpointError(folder / name, f"missing ({state_file.name} lists it)")
        if file_digest(folder / name) != digest:
            raise CheckpointError(folder / name, f"is not the file saved with {state_file.name} ({saved_at}): "
                                                 "this folder mixes files of two saves, so it cannot be resumed")
