"""The exercises: every solution passes its check, common mistakes fail it with a hint, and a blank
or crashing stub falls back to the reference so that the lesson keeps running."""

import ast
import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rlhf_lab import exercises, preferences, sft
from rlhf_lab.exercises import EXERCISES, LESSON_IMPORTS, exercise_cells

SOLUTIONS = Path(__file__).resolve().parent.parent / "notebooks" / "solutions"


def solution_module(lesson: int):
    path = SOLUTIONS / f"lesson{lesson:02d}.py"
    spec = importlib.util.spec_from_file_location(f"solutions_lesson{lesson:02d}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solution(name: str):
    exercise = EXERCISES[name]
    return getattr(solution_module(exercise.lesson), exercise.learner)


def verdict_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line[:1] in "✓✗○"]


# =====================================================================================
# Plausible wrong answers, as a learner might write them: (exercise, what is wrong, the answer,
# words the printed hint must contain).
# =====================================================================================


def with_answer(question: str, answer: str) -> dict:
    return {**exercises.REFERENCE_ANSWERS, question: answer}


def target_logprobs(logits, input_ids):
    return torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]


def sft_loss_without_shift(logits, input_ids, loss_mask):
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[..., None])[..., 0]
    return -(logprobs * loss_mask).sum() / loss_mask.sum()


def sft_loss_with_naive_log_softmax(logits, input_ids, loss_mask):
    probs = torch.softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]
    return -(torch.log(probs) * loss_mask[:, 1:]).sum() / loss_mask[:, 1:].sum()


def sft_mask_assuming_left_padding(attention_mask, prompt_lengths):
    width = attention_mask.shape[1]
    first_answer = width - attention_mask.sum(dim=1) + prompt_lengths
    return (torch.arange(width) >= first_answer[:, None]).float()


def rewards_with_score_in_last_column(scores, logprobs, ref_logprobs, mask, beta):
    rewards = torch.where(mask.bool(), -beta * (logprobs - ref_logprobs), 0.0)
    rewards[:, -1] += scores
    return rewards


def rewards_without_masking_pads(scores, logprobs, ref_logprobs, mask, beta):
    rewards = -beta * (logprobs - ref_logprobs)
    rewards[torch.arange(len(scores)), mask.sum(dim=1).long() - 1] += scores
    return rewards


def gae_loop(rewards, values, mask, gamma, lam, *, use_lam=True, stop_at_end=True):
    """GAE with two possible mistakes: forgetting λ, and bootstrapping from the pad after the end."""
    advantages = torch.zeros_like(values)
    next_value, next_advantage = torch.zeros(len(values)), torch.zeros(len(values))
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = delta + gamma * (lam if use_lam else 1.0) * next_advantage
        next_value, next_advantage = values[:, t], advantages[:, t]
        if stop_at_end:
            advantages[:, t] *= mask[:, t]
            next_value, next_advantage = next_value * mask[:, t], next_advantage * mask[:, t]
    return advantages


def gae_forwards(rewards, values, mask, gamma, lam):
    advantages = torch.zeros_like(values)
    for t in range(values.shape[1]):  # wrong direction: A_{t+1} is not known yet
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros(len(values))
        previous = advantages[:, t - 1] if t > 0 else torch.zeros(len(values))
        advantages[:, t] = (rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * previous) * mask[:, t]
    return advantages


def surrogate(logprobs, old_logprobs, advantages, mask, clip_eps, *, pick=torch.max, sign=-1.0, clip=True):
    ratio = torch.exp(torch.where(mask.bool(), logprobs - old_logprobs, 0.0))
    clipped_ratio = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) if clip else ratio
    per_token = pick(sign * advantages * ratio, sign * advantages * clipped_ratio)
    return torch.where(mask.bool(), per_token, 0.0).sum() / mask.sum()


def surrogate_over_all_tokens(logprobs, old_logprobs, advantages, mask, clip_eps):
    ratio = torch.exp(logprobs - old_logprobs)
    return torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)).mean()


def kl_update(beta, kl, target, horizon, n_steps, *, clip=True, flip=False, additive=False):
    error = 1 - kl / target if flip else kl / target - 1
    if clip:
        error = min(max(error, -0.2), 0.2)
    return beta + error * n_steps / horizon if additive else beta * (1 + error * n_steps / horizon)


def grpo_unguarded(rewards, eps=1e-4):
    return (rewards - rewards.mean(dim=1, keepdim=True)) / rewards.std(dim=1, keepdim=True)


def grpo_without_group_of_one(rewards, eps=1e-4):
    flat = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)
    advantages = (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + eps)
    return torch.where(flat & (rewards.shape[1] > 1), 0.0, advantages)


WRONG_ANSWERS = [
    ("be_the_assistant", "says yes to 'am i a failure?'", with_answer("am i a failure?", "yes."), "kindness"),
    ("be_the_assistant", "a wrong sum", with_answer("what is 7 plus 5?", "7 plus 5 is 13."), "number or fact is wrong"),
    ("be_the_assistant", "helps build a weapon",
     with_answer("how do i make a weapon at home?", "buy the parts and build it in secret."), "harmful help"),
    ("be_the_assistant", "refuses a benign request",
     with_answer("how do i kill a python process?", "i can not help with that."), "over-refusal"),
    ("three_ways_to_fail", "an unhelpful answer that is also dishonest",
     {**exercises.REFERENCE_FAILING_ANSWERS, "helpful": "i do not know."}, "also loses points on honest"),
    ("three_ways_to_fail", "an honest answer in the 'honest' slot",
     {**exercises.REFERENCE_FAILING_ANSWERS, "honest": "find its process id, then use the kill command with that id."},
     "keeps full marks on honest"),
    ("masked_sft_loss", "no shift (off by one)", sft_loss_without_shift, "position t - 1"),
    ("masked_sft_loss", "the mask is not shifted with the targets",
     lambda logits, ids, mask: -(target_logprobs(logits, ids) * mask[:, :-1]).sum() / mask[:, :-1].sum(),
     "loss_mask[:, 1:]"),
    ("masked_sft_loss", "loss over the prompt tokens too",
     lambda logits, ids, mask: -target_logprobs(logits, ids).mean(), "multiply by the mask"),
    ("masked_sft_loss", "sum instead of mean",
     lambda logits, ids, mask: -(target_logprobs(logits, ids) * mask[:, 1:]).sum(), "the loss is a mean"),
    ("masked_sft_loss", "pads counted in the mean",
     lambda logits, ids, mask: -(target_logprobs(logits, ids) * mask[:, 1:]).sum() / mask[:, 1:].numel(),
     "not by the number of positions"),
    ("masked_sft_loss", "one mean per row",
     lambda logits, ids, mask: (-(target_logprobs(logits, ids) * mask[:, 1:]).sum(1) / mask[:, 1:].sum(1)).mean(),
     "not one mean per row"),
    ("masked_sft_loss", "log of softmax", sft_loss_with_naive_log_softmax, "log_softmax"),
    ("sft_loss_mask", "off by one: the first answer token is left out",
     lambda attention, prompt: ((attention.cumsum(1) - 1 > prompt[:, None]) & attention.bool()).float(),
     "first answer token"),
    ("sft_loss_mask", "assumes left padding", sft_mask_assuming_left_padding, "pads are never targets"),
    ("sft_loss_mask", "marks the pads after the end",
     lambda attention, prompt: (attention.cumsum(1) - 1 >= prompt[:, None]).float(), "pads are never targets"),
    ("pairs_from_ranking", "neighbours only", lambda ranking: list(itertools.pairwise(ranking)), "not only neighbours"),
    ("pairs_from_ranking", "(worse, better)", lambda ranking: [(w, b) for b, w in itertools.combinations(ranking, 2)],
     "(better, worse)"),
    ("pairs_from_ranking", "both orders", lambda ranking: list(itertools.permutations(ranking, 2)), "(better, worse)"),
    ("pairs_from_ranking", "pairs with itself",
     lambda ranking: list(itertools.combinations_with_replacement(ranking, 2)), "never compared with itself"),
    ("noise_ceiling", "the mean of p", lambda probabilities: sum(probabilities) / len(probabilities), "max(p, 1 - p)"),
    ("noise_ceiling", "max outside the mean",
     lambda ps: max(sum(ps) / len(ps), 1 - sum(ps) / len(ps)), "max(p, 1 - p)"),
    ("bradley_terry_loss", "missing minus sign", lambda chosen, rejected, weights=None:
     F.logsigmoid(chosen - rejected).mean(), "minus sign"),
    ("bradley_terry_loss", "sum instead of mean", lambda chosen, rejected, weights=None:
     -F.logsigmoid(chosen - rejected).sum(), "not the sum"),
    ("bradley_terry_loss", "rejected minus chosen", lambda chosen, rejected, weights=None:
     -F.logsigmoid(rejected - chosen).mean(), "chosen answer first"),
    ("bradley_terry_loss", "log of sigmoid", lambda chosen, rejected, weights=None:
     -torch.log(torch.sigmoid(chosen - rejected)).mean(), "F.logsigmoid"),
    ("bradley_terry_loss", "ignores the weights", lambda chosen, rejected, weights=None:
     -F.logsigmoid(chosen - rejected).mean(), "use the weights"),
    ("bradley_terry_loss", "weighted sum over the number of pairs", lambda chosen, rejected, weights=None:
     (-F.logsigmoid(chosen - rejected) * (1 if weights is None else weights)).mean(), "sum of the weights"),
    ("last_real_index", "mask.sum() - 1", lambda mask: mask.sum(dim=1) - 1, "pads are on the right"),
    ("last_real_index", "always the last column", lambda mask: torch.full((len(mask),), mask.shape[1] - 1),
     "the last column is a pad"),
    ("last_real_index", "the first real token", lambda mask: mask.argmax(dim=1), "the first real token"),
    ("per_token_rewards", "the score in the last column", rewards_with_score_in_last_column, "last *real* token"),
    ("per_token_rewards", "KL of the reference minus the policy", lambda scores, logprobs, ref, mask, beta:
     rewards_with_score_in_last_column(scores, ref, logprobs, mask, beta), "policy minus reference"),
    ("per_token_rewards", "junk pads not masked", rewards_without_masking_pads, "pads get 0"),
    ("gae_advantages", "forgets λ", lambda *args: gae_loop(*args, use_lam=False), "with λ = 0"),
    ("gae_advantages", "bootstraps past the end", lambda *args: gae_loop(*args, stop_at_end=False),
     "nothing bootstraps past the end"),
    ("gae_advantages", "runs forwards", gae_forwards, "from the last token back"),
    ("clipped_surrogate_loss", "min instead of max", lambda *args: surrogate(*args, pick=torch.min),
     "not the min"),
    ("clipped_surrogate_loss", "missing minus sign", lambda *args: surrogate(*args, sign=1.0), "minus sign"),
    ("clipped_surrogate_loss", "no clipping", lambda *args: surrogate(*args, clip=False), "gradient is 0"),
    ("clipped_surrogate_loss", "mean over the pads too", surrogate_over_all_tokens, "real tokens only"),
    ("clipped_surrogate_loss", "a float, detached from the graph", lambda *args: surrogate(*args).item(),
     "no gradient"),
    ("adaptive_kl_update", "no clip", lambda *args: kl_update(*args, clip=False), "clip e"),
    ("adaptive_kl_update", "error upside down", lambda *args: kl_update(*args, flip=True), "raises β"),
    ("adaptive_kl_update", "additive update", lambda *args: kl_update(*args, additive=True), "raises β"),
    ("kl_k3", "r upside down", lambda logprobs, ref: torch.expm1(logprobs - ref) - (logprobs - ref),
     "log r = ref_logprobs - logprobs"),
    ("kl_k3", "k1 instead of k3", lambda logprobs, ref: logprobs - ref, "that is k1"),
    ("kl_k3", "forgets the - 1", lambda logprobs, ref: torch.exp(ref - logprobs) - (ref - logprobs), "r = 1 gives"),
    ("dpo_loss", "forgets the reference", lambda pw, pl, rw, rl, beta: -F.logsigmoid(beta * (pw - pl)).mean(),
     "π = π_ref"),
    ("dpo_loss", "missing minus sign", lambda pw, pl, rw, rl, beta:
     -F.logsigmoid(-beta * ((pw - rw) - (pl - rl))).mean(), "h = β"),
    ("dpo_loss", "forgets β", lambda pw, pl, rw, rl, beta: -F.logsigmoid((pw - rw) - (pl - rl)).mean(), "h = β"),
    ("dpo_loss", "log of sigmoid", lambda pw, pl, rw, rl, beta:
     -torch.log(torch.sigmoid(beta * ((pw - rw) - (pl - rl)))).mean(), "F.logsigmoid"),
    ("rloo_advantages", "baseline includes the answer itself", lambda rewards: rewards - rewards.mean(1, keepdim=True),
     "leave answer i out"),
    ("rloo_advantages", "divides by k",
     lambda rewards: rewards - (rewards.sum(1, keepdim=True) - rewards) / rewards.shape[1], "by k - 1"),
    ("rloo_advantages", "leaves one out of the whole batch, not of its group",
     lambda rewards: rewards - (rewards.sum() - rewards) / (rewards.numel() - 1), "its own rewards"),
    ("grpo_advantages", "forgets ε: a flat group divides 0 by 0", grpo_unguarded, "not NaN"),
    ("grpo_advantages", "population std", lambda rewards, eps=1e-4: (rewards - rewards.mean(1, keepdim=True))
     / (rewards.std(1, correction=0, keepdim=True) + eps), "sample standard deviation"),
    ("grpo_advantages", "a group of one gives NaN", grpo_without_group_of_one, "a group of one"),
]


# =====================================================================================
# The tests.
# =====================================================================================


@pytest.mark.parametrize("name", EXERCISES)
def test_the_solution_passes_its_check(name, capsys):
    mine = solution(name)
    assert EXERCISES[name].check(mine) is mine
    output = capsys.readouterr().out
    assert verdict_lines(output)[-1].startswith("✓ ") and "The rest of the lesson uses your" in output


@pytest.mark.parametrize("name", EXERCISES)
def test_the_reference_passes_its_own_check(name, capsys):
    # What a blank or wrong exercise hands to the rest of the lesson is right by the same standard.
    reference = EXERCISES[name].reference
    assert EXERCISES[name].check(reference) is reference
    assert verdict_lines(capsys.readouterr().out)[-1].startswith("✓ ")


@pytest.mark.filterwarnings("ignore:std\\(\\)")  # a wrong GRPO answer takes the std of a single reward
@pytest.mark.parametrize("name, mistake, answer, hint", WRONG_ANSWERS,
                         ids=[f"{name}: {mistake}" for name, mistake, _, _ in WRONG_ANSWERS])
def test_a_wrong_answer_fails_with_a_hint_and_the_lesson_gets_the_reference(name, mistake, answer, hint, capsys):
    exercise = EXERCISES[name]
    assert exercise.check(answer) is exercise.reference
    output = capsys.readouterr().out
    verdict = output[output.rindex(verdict_lines(output)[-1]):]  # the verdict, after lesson 01's per-answer notes
    assert verdict.startswith("✗ ") and "\n  Hint: " in verdict
    assert hint in verdict, f"expected the verdict to mention {hint!r}, got:\n{output}"
    assert "Traceback" not in output


def test_every_exercise_has_a_wrong_answer_that_fails():
    assert {name for name, *_ in WRONG_ANSWERS} == set(EXERCISES)


@pytest.mark.parametrize("name", EXERCISES)
def test_a_blank_stub_hands_back_the_reference(name, capsys):
    exercise = EXERCISES[name]
    namespace = {}
    exec(LESSON_IMPORTS + exercise.stub, namespace)  # noqa: S102 -- the stub cell, as the lesson runs it
    assert exercise.check(namespace[exercise.learner]) is exercise.reference
    lines = verdict_lines(capsys.readouterr().out)
    assert lines[-1].startswith("○ ") and "not written yet" in lines[-1] and "reference" in lines[-1]


def shape_error(*args, **kwargs):
    return torch.ones(2, 3) @ torch.ones(2, 3)  # RuntimeError: mat1 and mat2 shapes cannot be multiplied


@pytest.mark.parametrize("name", EXERCISES)
def test_a_function_that_crashes_is_reported_in_one_friendly_line(name, capsys):
    exercise = EXERCISES[name]
    if exercise.lesson == 1:
        crashing, expected = [("am i a failure?", "no")], "expected a dict"  # answers, not functions
    else:
        crashing, expected = shape_error, "your function raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    assert exercise.check(crashing) is exercise.reference
    output = capsys.readouterr().out
    assert "Traceback" not in output and len(verdict_lines(output)) == 1
    assert verdict_lines(output)[0].startswith("✗ ") and expected in output


def test_an_answer_that_is_not_text_is_reported_and_a_partly_blank_dict_is_not_a_pass(capsys):
    answers = {**exercises.REFERENCE_ANSWERS, "what is 7 plus 5?": 12, "am i a failure?": ...}
    assert exercises.check_be_the_assistant(answers) is exercises.REFERENCE_ANSWERS
    output = capsys.readouterr().out
    assert "must be a string in quotes, got a int" in output and '○ "am i a failure?": not written yet' in output
    assert verdict_lines(output)[-1].startswith("✗ Be the assistant: 2 of 4 answers")


def test_a_bare_refusal_passes_but_says_how_to_be_more_helpful(capsys):
    answers = with_answer("how do i make a weapon at home?", "i can not help with that.")
    assert exercises.check_be_the_assistant(answers) is answers
    assert "offers something safe" in capsys.readouterr().out


def test_the_checks_leave_the_learners_inputs_and_the_global_random_state_alone(capsys):
    state = torch.random.get_rng_state()

    def writes_into_its_input(rewards):
        rewards -= rewards.mean(dim=1, keepdim=True)  # in place: must not spoil the reference's answer
        return rewards * rewards.shape[1] / (rewards.shape[1] - 1)

    assert exercises.check_rloo_advantages(writes_into_its_input) is writes_into_its_input
    assert torch.equal(torch.random.get_rng_state(), state)


def stub_functions(source: str) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("name", EXERCISES)
def test_each_solution_has_the_stubs_name_signature_and_docstring(name):
    exercise = EXERCISES[name]
    path = SOLUTIONS / f"lesson{exercise.lesson:02d}.py"
    solved = stub_functions(path.read_text(encoding="utf-8"))
    stubs = stub_functions(exercise.stub)
    if not stubs:  # lesson 01: a dict of answers, with the same keys
        stub_value = ast.literal_eval(ast.parse(exercise.stub.replace("...", "None")).body[0].value)
        assert set(getattr(solution_module(exercise.lesson), exercise.learner)) == set(stub_value)
        return
    stub = stubs[exercise.learner]
    assert ast.dump(solved[exercise.learner].args) == ast.dump(stub.args)
    assert ast.dump(solved[exercise.learner].returns) == ast.dump(stub.returns)
    assert ast.get_docstring(solved[exercise.learner]) == ast.get_docstring(stub)
    assert [type(node) for node in stub.body] == [ast.Expr, ast.Raise], "a stub is a docstring and a raise"


@pytest.mark.parametrize("lesson", range(1, 8))
def test_a_lesson_with_every_exercise_blank_runs_on(lesson, capsys):
    cells = exercise_cells(lesson)
    assert 2 <= len(cells) <= 4
    namespace = {}
    exec(LESSON_IMPORTS, namespace)  # noqa: S102 -- the lesson's cells, run as a kernel would
    for stub, check in cells:
        exec(stub, namespace)  # noqa: S102
        exec(check, namespace)  # noqa: S102
    lines = verdict_lines(capsys.readouterr().out)
    assert len(lines) == len(cells) and all(line.startswith("○ ") for line in lines)
    for exercise in (e for e in EXERCISES.values() if e.lesson == lesson):
        assert namespace[exercise.result] is exercise.reference
        assert exercise.check_cell.startswith(f"{exercise.result} = exercises.check_{exercise.name}(")


def test_exercise_cells_names_the_lessons_that_have_exercises():
    with pytest.raises(ValueError, match=r"lesson 8 has no exercises; lessons with exercises: \[1, 2, 3, 4, 5, 6, 7\]"):
        exercise_cells(8)


def test_the_loss_mask_reference_agrees_with_sft_collate():
    examples = [(list(range(10, 17)), 3), (list(range(20, 24)), 2), (list(range(30, 39)), 5)]
    _, attention_mask, loss_mask = sft.collate(examples, pad_id=0, response_only=True)
    prompt_lengths = torch.tensor([prompt_length for _, prompt_length in examples])
    assert torch.equal(exercises.reference_sft_loss_mask(attention_mask, prompt_lengths), loss_mask)


def test_the_pairs_reference_agrees_with_preferences_ranking_to_pairs():
    ranking = ["a", "b", "c", "d"]
    records = preferences.ranking_to_pairs("q?", ranking, source="simulated", annotator="test")
    assert exercises.reference_pairs_from_ranking(ranking) == [(record.chosen, record.rejected) for record in records]
