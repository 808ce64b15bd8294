"""Faults a user can cause, each one reproduced: nothing already saved is lost, every message names its
file or argument (issue 12, "Nothing a user does leaves a broken state").

The issue's cases, and where each is tested:
- checkpoints written in place: SIGKILL mid-save (random delays, and at every step of a save), a full
  disk during the sft / reward / PPO saves, a crash between the two renames -- below;
- inputs checked after the work: every bad argument through `cli.main` -- below (and tests/test_cli.py);
- `label` into the SFT data file -- below;
- two notebook kernels on one label file, a crash fragment, a byte-order mark, identical answers -- below;
- broken checkpoints (missing / truncated / empty weights, bad config.json, wrong shape, no tokenizer,
  corrupt tokenizer.json / PPO state / best_of_n.json / metrics.json) -- below;
- the reward stage's `prefs`, which DPO reads -- below; a NaN named, with a true message at
  iteration 0 -- below and tests/test_ppo_trainer.py;
- the judge and the labeller on huge numbers and answers -- tests/test_judge.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_cli import clean_error, run

from rlhf_lab import checkpoints, dpo, ppo, stages
from rlhf_lab.checkpoints import CheckpointError
from rlhf_lab.config import REPO_DIR, data_dir, find_checkpoint
from rlhf_lab.policy import load_policy, save_policy
from rlhf_lab.preferences import PreferenceRecord, PreferenceStore, RecordError
from rlhf_lab.reward import RewardModel

SHIPPED = data_dir() / "checkpoints"
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO_DIR), os.environ.get("PYTHONPATH", "")])}


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under a folder and its bytes: what "nothing written, nothing lost" compares."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def error_line(capsys) -> str:
    """The one error line of a command that trained first (its progress bars are on stderr too); no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("python -m rlhf_lab")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if ".new-" in path.name or ".old-" in path.name)


@pytest.fixture
def artifacts(tmp_path, monkeypatch) -> Path:
    """An empty artifacts folder that find_checkpoint looks in first."""
    folder = tmp_path / "artifacts"
    folder.mkdir()
    monkeypatch.setenv("RLHF_LAB_ARTIFACTS", str(folder))
    return folder


# =====================================================================================
# Killed mid-save: the old checkpoint or the new one, never a mix.
# =====================================================================================


@pytest.mark.slow
def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint_old_or_new(tmp_path):
    # SIGKILL does not depend on fsync, so the saves run on a RAM disk where fsync costs nothing.
    ram = Path("/dev/shm")
    root = Path(tmp_path if not (ram.is_dir() and os.access(ram, os.W_OK)) else ram) / f"kills-{os.getpid()}"
    root.mkdir()
    try:
        result = subprocess.run([sys.executable, str(Path(__file__).parent / "kill_during_save.py"), str(root), "30",
                                 "ppo", "0"], capture_output=True, text=True, timeout=600, env=ENV)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    print(json.dumps(report))  # the numbers: kills, and how many found the old checkpoint or the new one
    for mode in ("random", "steps"):
        assert report[mode]["failures"] == [], report[mode]
        assert report[mode]["old"] + report[mode]["new"] == report[mode]["kills"]
    assert report["random"]["kills"] == 30
    # Every step of a PPO save was interrupted: before its final rename (old) and after it (new).
    assert report["steps"]["kills"] >= 20 and report["steps"]["old"] >= 1 and report["steps"]["new"] >= 1


def test_a_crash_between_the_two_renames_is_finished_by_the_next_reader(sft, artifacts):
    model, tokenizer = sft
    save_policy(model, tokenizer, artifacts / "sft")
    with torch.no_grad():
        model.transformer.wpe.weight[0, 0] = 1234.0
    save_policy(model, tokenizer, artifacts / "next")
    # The state a crash leaves right after the first rename: the old folder set aside, the new one staged.
    os.rename(artifacts / "sft", artifacts / ".sft.old-00000000000000000001-aaaaaaaa")
    os.rename(artifacts / "next", artifacts / ".sft.new-00000000000000000002-bbbbbbbb")
    with pytest.warns(UserWarning, match="a save was interrupted; finished the save that was interrupted"):
        assert find_checkpoint("sft") == artifacts / "sft"
    assert load_policy(artifacts / "sft")[0].transformer.wpe.weight[0, 0].item() == 1234.0
    save_policy(model, tokenizer, artifacts / "sft")  # the next save clears the leftovers
    assert leftovers(artifacts) == []


def test_a_crash_before_the_new_folder_was_finished_restores_the_old_one(sft, artifacts):
    model, tokenizer = sft
    save_policy(model, tokenizer, artifacts / "sft")
    before = tree(artifacts / "sft")
    os.rename(artifacts / "sft", artifacts / ".sft.old-00000000000000000001-aaaaaaaa")
    unfinished = artifacts / ".sft.new-00000000000000000002-bbbbbbbb"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{")  # no checkpoint.json: this save never finished
    with pytest.warns(UserWarning, match="restored the previous checkpoint"):
        assert find_checkpoint("sft") == artifacts / "sft"
    assert tree(artifacts / "sft") == before


def test_a_save_never_replaces_a_folder_that_is_not_a_checkpoint(sft, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files but no checkpoint .*notes.txt"):
        save_policy(*sft, tmp_path)
    assert tree(tmp_path) == {"notes.txt": b"mine"}


# =====================================================================================
# A full disk: the save fails, the previous checkpoint stays whole and findable.
# =====================================================================================


@contextlib.contextmanager
def small_disk(folder: Path, megabytes: int):
    """A real small file system (tmpfs) when running as root; else None (the caller patches a writer)."""
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(disk: Path | None, monkeypatch, keep_free: int = 100_000) -> None:
    """Leave `keep_free` bytes on the small disk; without one, make the checkpoint writer fail as a full disk does."""
    if disk is None:
        def full(folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(checkpoints, "write_manifest", full)
        return
    status = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * max(0, status.f_bavail * status.f_frsize - keep_free))


def save_stage(stage: str, folder: Path, sft, new_ppo_trainer) -> None:
    """A checkpoint as the stage saves it: sft (the policy, then the run's files), reward, or PPO's full state."""
    model, tokenizer = sft
    if stage == "sft":
        save_policy(model, tokenizer, folder)
        stages.save_run(folder, None, {"stage": stage})
    elif stage == "reward":
        RewardModel.from_policy(model).save(folder, tokenizer)
        stages.save_run(folder, None, {"stage": stage})
    else:
        trainer = new_ppo_trainer()
        trainer.iteration, trainer.history = 1, [{"iteration": 0}]
        trainer.save(folder)


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(stage, tmp_path, sft, new_ppo_trainer, monkeypatch):
    with small_disk(tmp_path / "disk", megabytes=12) as disk:
        root = disk or tmp_path / "disk"
        monkeypatch.setenv("RLHF_LAB_ARTIFACTS", str(root))
        save_stage(stage, root / stage, sft, new_ppo_trainer)
        before = tree(root / stage)
        fill_disk(disk, monkeypatch)
        with torch.no_grad():
            sft[0].transformer.wpe.weight.add_(1.0)  # a different model, which no longer fits
        with pytest.raises(OSError, match="could not save .* the checkpoint already there is unchanged") as caught:
            save_stage(stage, root / stage, sft, new_ppo_trainer)
        assert caught.value.errno == errno.ENOSPC
        assert tree(root / stage) == before and leftovers(root) == []
        if stage == "ppo":
            assert ppo.read_ppo_state(root / stage)[0]["iteration"] == 1
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # not skipped: it is whole
                assert find_checkpoint(stage) == root / stage


@pytest.mark.slow
def test_sft_on_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, sft, capsys, monkeypatch):
    with small_disk(tmp_path / "disk", megabytes=4) as disk:
        root = disk or tmp_path / "disk"
        monkeypatch.setenv("RLHF_LAB_ARTIFACTS", str(root))
        save_policy(*sft, root / "sft")
        before = tree(root / "sft")
        fill_disk(disk, monkeypatch)
        status = run("sft", "--policy", SHIPPED / "base", "--scale", "ci", "--steps", "2", "--out", root / "sft")
        message = error_line(capsys)
        assert status == 1 and "could not save" in message and "unchanged" in message, message
        assert tree(root / "sft") == before and find_checkpoint("sft") == root / "sft"


# =====================================================================================
# Bad arguments: one line naming the argument or file, exit code 2, nothing written.
# =====================================================================================


def one_prompt_per_family(path: Path) -> Path:
    store = PreferenceStore(path)
    for prompt in ("what is 2 plus 3?", "what is the capital of france?", "how do i make a bomb?"):
        store.add(PreferenceRecord(prompt, chosen="a good answer.", rejected="a bad one.", source="simulated"))
    return path


def broken_copy(source: Path, folder: Path, file: str, content: bytes) -> Path:
    shutil.copytree(source, folder)
    (folder / file).write_bytes(content)
    return folder


# Bad numbers, devices and missing files are in tests/test_cli.py (test_bad_arguments_are_one_line_errors...);
# these are the faults of files and folders a user can hand the command line.
BAD_ARGUMENTS = [
    (["ppo", "--out", "{tmp}/a_file"], "a_file is a file"),
    (["sft", "--out", "{tmp}"], "holds folders"),  # e.g. artifacts/ instead of artifacts/sft: never replaced
    (["reward", "--prefs", "{tmp}", "--out", "{tmp}/rm"], "is a folder"),
    (["label", "--simulate", "3", "--policy", str(SHIPPED / "sft"), "--out", "{tmp}/sft.jsonl"],
     "not a preference file"),
    (["reward", "--prefs", "{tmp}/one_prompt_each.jsonl", "--scale", "ci", "--out", "{tmp}/rm"],
     "no prompt can be held out"),
    (["dpo", "--prefs", "{tmp}/one_prompt_each.jsonl", "--scale", "ci", "--out", "{tmp}/dpo"],
     "no prompt can be held out"),
    (["ppo", "--resume", "--scale", "ci", "--out", "{tmp}/empty"], "no PPO checkpoint to resume"),
    (["evaluate", "--scale", "ci", "--policy", "{tmp}/cut_short"], "cut_short/model.safetensors: cut short"),
    (["evaluate", "--scale", "ci", "--policy", "{tmp}/bad_bon"], "bad_bon/best_of_n.json: not valid JSON"),
]


@pytest.mark.parametrize("argv, named", BAD_ARGUMENTS, ids=[" ".join(argv[:2]) for argv, _ in BAD_ARGUMENTS])
def test_every_bad_argument_is_one_line_exit_2_and_writes_nothing(argv, named, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    shutil.copy(data_dir() / "world" / "sft.jsonl", tmp_path / "sft.jsonl")
    one_prompt_per_family(tmp_path / "one_prompt_each.jsonl")
    (tmp_path / "empty").mkdir()
    weights = (SHIPPED / "sft" / "model.safetensors").read_bytes()
    broken_copy(SHIPPED / "sft", tmp_path / "cut_short", "model.safetensors", weights[: len(weights) // 2])
    (tmp_path / "bad_bon").mkdir()
    (tmp_path / "bad_bon" / "best_of_n.json").write_text('{"policy": "data/checkpoints/sft",\n')
    before = tree(tmp_path)
    message = clean_error(capsys, *[arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    assert named in message, message
    assert tree(tmp_path) == before


def test_a_mistyped_preference_file_says_no_such_file_from_python_too(tmp_path):
    with pytest.raises(FileNotFoundError, match="prefrences.jsonl: no such preference file"):
        stages.reward_stage(tmp_path / "rm", prefs_path=tmp_path / "prefrences.jsonl", scale="ci")
    with pytest.raises(FileNotFoundError, match="no such preference file"):
        dpo.preference_pairs(tmp_path / "prefrences.jsonl")
    assert sorted(tmp_path.iterdir()) == []


def test_cuda_on_a_machine_without_one_and_an_unwritable_out_are_one_line_errors(tmp_path, capsys):
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in clean_error(capsys, "ppo", "--device", "cuda", "--out", tmp_path / "ppo")
    with small_disk(tmp_path / "readonly", megabytes=1) as disk:
        if disk is not None:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)  # even root cannot write here
        else:
            (tmp_path / "readonly").chmod(0o555)
        message = clean_error(capsys, "sft", "--steps", "2", "--out", tmp_path / "readonly" / "sft")
        assert "cannot write into" in message and not (tmp_path / "readonly" / "sft").exists()


# =====================================================================================
# The preference store with several writers, and what crashes and editors leave in it.
# =====================================================================================


def label(n: int = 0, **fields) -> PreferenceRecord:
    return PreferenceRecord(**{"prompt": f"what is {n} plus 1?", "chosen": f"{n + 1}.", "rejected": "7.", **fields})


def ids(records: list[PreferenceRecord]) -> list[str]:
    return [record.id for record in records]  # the id leaves out the time, which differs between two label() calls


def test_two_kernels_on_one_file_never_lose_a_label(tmp_path):
    path = tmp_path / "learner.jsonl"
    kernel_a = PreferenceStore(path)
    assert kernel_a.add(label())
    kernel_b = PreferenceStore(path)
    assert [record.id for record in kernel_a.undo(label().id)] == [label().id]
    assert kernel_b.add(label()) is True  # it was undone meanwhile: B's label is new and is written
    assert ids(PreferenceStore(path).records) == [label().id] == ids(kernel_b.records)


def test_a_label_another_kernel_already_stored_is_not_written_twice(tmp_path):
    path = tmp_path / "learner.jsonl"
    kernel_a, kernel_b = PreferenceStore(path), PreferenceStore(path)
    assert kernel_a.add(label())
    assert kernel_b.add(label()) is False and ids(kernel_b.records) == [label().id]
    assert len(path.read_text().splitlines()) == 1
    kernel_a.undo(label().id)
    assert kernel_b.undo(label().id) == []  # already undone by A: no second tombstone
    reopened = PreferenceStore(path)
    assert len(reopened) == 0 and reopened.errors == []


@pytest.mark.slow
def test_two_processes_labelling_and_undoing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "shared.jsonl"
    child = ("import sys\nfrom rlhf_lab.preferences import PreferenceRecord, PreferenceStore\n"
             "store, who = PreferenceStore(sys.argv[1]), sys.argv[2]\n"
             "for n in range(150):\n"
             "    store.add(PreferenceRecord(f'what is {n} plus 1?', 'right.', 'wrong.', annotator=who))\n"
             "    if n % 3 == 0:\n"
             "        store.undo_last(annotator=who)\n")
    writers = [subprocess.Popen([sys.executable, "-c", child, str(path), who], env=ENV) for who in ("ada", "bob")]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    store = PreferenceStore(path)
    expected = {(who, n) for who in ("ada", "bob") for n in range(150) if n % 3}
    assert {(r.annotator, int(r.prompt.split()[2])) for r in store.records} == expected and store.errors == []


def test_a_crash_fragment_is_set_aside_once_and_does_not_block_lesson_03(tmp_path):
    path = tmp_path / "learner.jsonl"
    PreferenceStore(path).add(label(1))
    with open(path, "ab") as file:
        file.write(json.dumps(label(2).to_dict()).encode()[:50])  # a write the crash cut short
    with pytest.warns(UserWarning, match="moved an incomplete last line"):
        store = PreferenceStore(path)
    assert not store.errors and ids(store.records) == [label(1).id]  # lesson 03 asserts `not learner_store.errors`
    assert (tmp_path / "learner.jsonl.incomplete").read_bytes() == json.dumps(label(2).to_dict()).encode()[:50] + b"\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ids(PreferenceStore(path).records) == [label(1).id]  # reported once


def test_a_byte_order_mark_on_the_first_line_is_tolerated(tmp_path):
    path = tmp_path / "edited.jsonl"
    path.write_text(json.dumps(label(1).to_dict()) + "\n", encoding="utf-8-sig")  # Notepad's way
    store = PreferenceStore(path)
    assert ids(store.records) == [label(1).id] and store.errors == []
    assert store.add(label(2)) and ids(PreferenceStore(path).records) == [label(1).id, label(2).id]


@pytest.mark.parametrize("fields, field", [({"rejected": "2."}, "rejected"), ({"prompt": "  "}, "prompt")])
def test_identical_answers_and_an_empty_prompt_are_refused_naming_the_field(fields, field, tmp_path):
    with pytest.raises(RecordError, match=f"field '{field}'"):
        PreferenceStore(tmp_path / "prefs.jsonl").add(label(1, **fields))
    assert not (tmp_path / "prefs.jsonl").exists()
    # One empty answer is a real answer (a policy that stops at once), which the labeller judges.
    assert label(1, rejected="").rejected == ""


# =====================================================================================
# Broken checkpoints: refused with the file's name; find_checkpoint skips them, saying why.
# =====================================================================================


def shrink_embedding(folder: Path) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"][:-3].clone()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


BREAKAGES = {
    "missing weights": (lambda folder: (folder / "model.safetensors").unlink(), "model.safetensors: missing"),
    "truncated weights": (lambda folder: (folder / "model.safetensors").write_bytes(
        (folder / "model.safetensors").read_bytes()[:300_000]), "model.safetensors: cut short"),
    "empty weights": (lambda folder: (folder / "model.safetensors").write_bytes(b""), "model.safetensors: empty"),
    "bad config.json": (lambda folder: (folder / "config.json").write_text("{\n"), "config.json: not valid JSON"),
    "wrong shape": (shrink_embedding, "model.safetensors: tensor 'transformer.wte.weight' has shape [708, 64]"),
    "no tokenizer": (lambda folder: [(folder / name).unlink() for name in ("tokenizer.json", "tokenizer_config.json")],
                     "tokenizer.json: missing"),
    "corrupt tokenizer.json": (lambda folder: (folder / "tokenizer.json").write_text("{\n"),
                               "tokenizer.json: not valid JSON"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_policy_is_refused_naming_the_file_and_find_checkpoint_falls_back(breakage, artifacts, capsys):
    break_it, named = BREAKAGES[breakage]
    shutil.copytree(SHIPPED / "sft", artifacts / "sft")
    break_it(artifacts / "sft")
    with pytest.raises(CheckpointError, match=str(artifacts / "sft" / named).replace("[", r"\[")):
        load_policy(artifacts / "sft")
    with pytest.warns(UserWarning, match=f"skipped {artifacts / 'sft'}: .*{named.split(':')[0]}"):
        assert find_checkpoint("sft") == SHIPPED / "sft"  # the shipped one, not the broken one
    assert named in clean_error(capsys, "evaluate", "--scale", "ci", "--policy", artifacts / "sft")


def test_a_broken_reward_model_is_refused_naming_the_file(artifacts):
    weights = (SHIPPED / "reward" / "model.safetensors").read_bytes()
    broken_copy(SHIPPED / "reward", artifacts / "reward", "model.safetensors", weights[:-10])
    with pytest.raises(CheckpointError, match=r"reward/model\.safetensors: cut short"):
        RewardModel.load(artifacts / "reward")
    with pytest.warns(UserWarning, match="skipped"):
        assert find_checkpoint("reward") == SHIPPED / "reward"


@pytest.fixture
def ppo_checkpoint(tmp_path, new_ppo_trainer) -> tuple[Path, Path]:
    """Two PPO saves of one run: iteration 1 and iteration 2."""
    trainer = new_ppo_trainer(iterations=2, save_every=1)
    trainer.cfg.iterations = 1
    trainer.train(progress=False, out=tmp_path / "first")
    trainer.cfg.iterations = 2
    trainer.train(progress=False, out=tmp_path / "second")
    return tmp_path / "first", tmp_path / "second"


@pytest.mark.slow
def test_ppo_resume_refuses_parts_of_different_saves_and_names_them(ppo_checkpoint, new_ppo_trainer):
    first, second = ppo_checkpoint
    assert ppo.read_ppo_state(second)[0]["iteration"] == 2
    # What a crash in the old in-place save could leave: iteration-2 weights beside the iteration-1 critic.
    shutil.copy(first / "critic.safetensors", second / "critic.safetensors")
    (second / "checkpoint.json").unlink()  # as written by hand, or by an older version
    with pytest.raises(CheckpointError, match=r"critic\.safetensors: is not the file saved with ppo_state\.json "
                                              r"\(iteration 2\).*mixes files of two saves"):
        new_ppo_trainer().resume(second)
    (first / "ppo_state.json").write_text('{"iteration": 1,')
    with pytest.raises(CheckpointError, match=r"first/ppo_state\.json: 16 bytes, but \d+ when the checkpoint was"):
        new_ppo_trainer().resume(first)
    (first / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match=r"first/ppo_state\.json: not valid JSON"):
        new_ppo_trainer().resume(first)


@pytest.mark.slow
def test_an_old_trainer_state_json_still_resumes_and_its_history_must_agree(ppo_checkpoint, new_ppo_trainer):
    first, _ = ppo_checkpoint
    state = json.loads((first / "ppo_state.json").read_text())
    del state["parts"]  # the old file had no checksums
    (first / "trainer_state.json").write_text(json.dumps(state))
    (first / "ppo_state.json").unlink()
    (first / "checkpoint.json").unlink()
    trainer = new_ppo_trainer()
    with pytest.warns(UserWarning, match="old PPO state without checksums"):
        trainer.resume(first)
    assert trainer.iteration == 1
    state["iteration"] = 3  # its history has one row: the parts disagree
    (first / "trainer_state.json").write_text(json.dumps(state))
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"history\.csv: has 1 rows, but "
                                                                         r"trainer_state\.json says 3"):
        new_ppo_trainer().resume(first)


def test_a_corrupt_metrics_json_is_named_when_dpo_looks_for_the_reward_models_labels(tmp_path):
    reward_dir = shutil.copytree(SHIPPED / "reward", tmp_path / "reward")
    (reward_dir / "metrics.json").write_text('{"prefs": ')
    with pytest.raises(CheckpointError, match=r"reward/metrics\.json: not valid JSON"):
        dpo.reward_model_preferences(reward_dir)


@pytest.mark.slow
def test_the_reward_stage_records_its_preference_file_for_dpo(tmp_path):
    prefs = tmp_path / "mine.jsonl"
    prefs.write_text("".join((data_dir() / "world" / "preferences.jsonl").read_text().splitlines(True)[:240]))
    stages.reward_stage(tmp_path / "reward", prefs_path=prefs, scale="ci", progress=False, normalise_samples=16)
    assert dpo.reward_model_preferences(tmp_path / "reward") == prefs.resolve()


@pytest.mark.slow
def test_a_nan_reward_from_the_command_line_is_one_line_naming_it_and_saves_nothing(tmp_path, reward_model, capsys):
    tokenizer = load_policy(SHIPPED / "sft")[1]
    with torch.no_grad():
        reward_model.head.weight.fill_(float("nan"))
    reward_model.save(tmp_path / "nan_reward", tokenizer)
    status = run("ppo", "--scale", "ci", "--iterations", "1", "--reward", tmp_path / "nan_reward",
                 "--out", tmp_path / "ppo")
    message = error_line(capsys)
    assert status == 1 and "iteration 0: the reward model's score is nan" in message, message
    assert "no checkpoint was saved" in message
    assert not (tmp_path / "ppo").exists()
