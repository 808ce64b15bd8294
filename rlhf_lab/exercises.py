"""Exercises: the learner writes the key formula of a lesson, and a check says whether it is right.

Each exercise is two cells in a lesson. The stub cell holds a signature, a docstring with the
formula and `raise NotImplementedError`; the check cell is one line:

    masked_sft_loss = exercises.check_masked_sft_loss(my_masked_sft_loss)

The check calls the learner's function on small cases with known answers (masks, padding, ties,
large logits, flat groups, ...) and prints one verdict:

    ✓  it passed: the check returns the learner's function and the lesson goes on with it;
    ✗  a case went wrong or the function raised: what happened and a hint, in a few lines;
    ○  the stub is still blank.

After ✗ or ○ the check returns the reference implementation, so a lesson runs top to bottom
whatever the learner wrote. The learner's errors are caught and reported in one line, never as a
traceback from inside torch. Lesson 01's two exercises are answers (strings) rather than
functions; they are judged by the simulated human, `judge.judge`.

`EXERCISES` lists every exercise (lesson, check, reference, cell sources); `exercise_cells(lesson)`
gives one lesson's (stub, check) cell sources. Model solutions: `notebooks/solutions/`.
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_lab import dpo, judge, kl, ppo, reward, rloo_grpo, sft
from rlhf_lab.world import parse_prompt

# Tolerance. float32 keeps 24 bits (machine epsilon 1.2e-7). Our cases combine at most a few dozen
# terms, so a correct implementation, whatever order it sums in and on any CPU, differs from the
# reference by at most ~30 * 1.2e-7 ≈ 4e-6 of the size of the terms. We allow 1e-5 of that size
# (relative to the expected value, and absolute relative to the terms' size). The mistakes the
# checks catch are off by far more: 1e-2 or more, the smallest (GRPO without its ε = 1e-4) by 7e-5.
RTOL = 1e-5

# The lesson's import cell must run this before the exercise cells (the tests do the same).
LESSON_IMPORTS = "import torch\n\nfrom rlhf_lab import exercises\n"


# =====================================================================================
# Running a check and printing its verdict.
# =====================================================================================


class _Blank(Exception):
    """The learner's function still raises NotImplementedError (or the answer is still `...`)."""


class _Failed(Exception):
    """A case went wrong: `what` happened; `hint` says where to look."""

    def __init__(self, what: str, hint: str):
        super().__init__(what)
        self.what = what
        self.hint = hint


def _one_line(error: Exception) -> str:
    """`TypeName: first line of the message`, short enough for one line."""
    lines = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return message if len(message) <= 160 else message[:157] + "..."


def _verdict(title: str, learner: Any, reference: Any, reference_name: str, trials: Callable[[Any], str],
             yours: str = "your function") -> Any:
    """Run `trials(learner)`, print one verdict, and return what the rest of the lesson should use.

    `trials` raises `_Blank` or `_Failed`, or returns a summary of what passed.
    """
    fallback = f"The rest of the lesson uses the reference, {reference_name}."
    try:
        if learner is None or learner is Ellipsis:
            raise _Blank
        passed = trials(learner)
    except _Blank:
        print(f"○ {title}: not written yet. {fallback}")
        return reference
    except _Failed as failure:
        print(f"✗ {title}: {failure.what}\n  Hint: {failure.hint}\n  {fallback} Fix yours and run this cell again.")
        return reference
    except Exception as error:  # noqa: BLE001 -- a bug in the check itself: still one line, not a traceback
        print(f"✗ {title}: the check could not run ({_one_line(error)}). {fallback}")
        return reference
    print(f"✓ {title}: {passed}. The rest of the lesson uses {yours}.")
    return learner


def _call(function: Any, case: str, *args: Any) -> Any:
    """Call the learner's function on copies of `args`; whatever it raises becomes a verdict."""
    if not callable(function):
        raise _Failed(f"expected a function, got {type(function).__name__}",
                      "define it with `def` in the cell above and pass its name here")
    # Copies, so a function that writes into its inputs cannot spoil the reference's answer.
    copies = [arg.clone() if isinstance(arg, Tensor) else list(arg) if isinstance(arg, list) else arg for arg in args]
    try:
        return function(*copies)
    except NotImplementedError:
        raise _Blank from None
    except Exception as error:  # noqa: BLE001 -- whatever the learner's code raises, reported in one line
        raise _Failed(f"on {case}, your function raised {_one_line(error)}",
                      "run it on that input yourself and print the shape of every tensor you combine") from None


def _as_tensor(result: Any, case: str, shape: torch.Size) -> Tensor:
    """The learner's result as a float64 tensor of the expected shape, or a `_Failed` saying why not."""
    if isinstance(result, tuple):
        raise _Failed(f"on {case}, your function returned a tuple of {len(result)} things",
                      "return only the one result the docstring asks for")
    try:
        actual = torch.as_tensor(result.detach() if isinstance(result, Tensor) else result, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise _Failed(f"on {case}, your function returned a {type(result).__name__}, not a number or a tensor",
                      "return the result the docstring asks for (did you forget `return`?)") from None
    if len(shape) == 0 and actual.numel() == 1:
        actual = actual.reshape(())  # a loss of shape (1,) is still one number
    if actual.shape != shape:
        raise _Failed(f"on {case}, your result has shape {tuple(actual.shape)}, expected {tuple(shape)}",
                      "check which dimension you sum or average over (a loss is one number; a per-token "
                      "result keeps the (B, T) shape)")
    return actual


def _show(values: Tensor, digits: int = 4) -> str:
    """A tensor's values, `digits` significant digits each."""
    def show(item):
        return "[" + ", ".join(show(x) for x in item) + "]" if isinstance(item, list) else f"{item + 0.0:.{digits}g}"
    return show(values.tolist())


def _expect_close(result: Any, expected: Tensor, case: str, hint: str, scale: float | None = None,
                  mistakes: list[tuple[Tensor, str]] = ()) -> None:
    """Raise `_Failed` unless `result` equals `expected` within RTOL (of `scale`, the size of the terms).

    `mistakes` are (value a known mistake gives, hint for it): when the learner's result matches
    one of them, that hint replaces the case's general one.
    """
    expected = torch.as_tensor(expected).detach().double()
    actual = _as_tensor(result, case, expected.shape)
    scale = scale if scale is not None else max(1.0, expected.abs().max().item())
    if torch.allclose(actual, expected, rtol=RTOL, atol=RTOL * scale):
        return
    for mistake, mistake_hint in mistakes:
        if torch.allclose(actual, mistake.detach().double(), rtol=RTOL, atol=RTOL * scale):
            hint = mistake_hint
            break
    digits = 4 if _show(expected) != _show(actual) else 8  # close calls need more digits to see the difference
    where = ""
    if expected.dim() > 0:
        first = (~torch.isclose(actual, expected, rtol=RTOL, atol=RTOL * scale)).nonzero()[0].tolist()
        where = f" (first difference at index {first[0] if len(first) == 1 else tuple(first)})"
    raise _Failed(f"on {case}, expected {_show(expected, digits)}, got {_show(actual, digits)}{where}", hint)


# =====================================================================================
# Lesson 01: answers judged by the simulated human.
# =====================================================================================

DIMENSIONS = ("helpful", "harmless", "honest")
PASS_SCORE = 2.5  # of an ideal 3: one small slip (a refusal without an offer) still passes

# Flag of `judge.judge` -> (the dimensions it costs, why).
FLAG_HINTS = {
    "over_refusal": (("helpful",), "it refuses a harmless request (over-refusal)"),
    "incorrect": (("helpful", "honest"), "the number or fact is wrong"),
    "evasive": (("helpful", "honest"), "it claims not to know something it can know"),
    "off_topic": (("helpful",), "it does not answer the question (use the question's own words)"),
    "fabricated": (("honest",), "it makes something up ('studies show', a confident guess at the unknowable)"),
    "unkind": (("helpful",), "this question needs kindness, e.g. 'you are not a failure', 'everyone has hard times'"),
    "harmful": (("harmless",), "it gives harmful help"),
    "rude": (("harmless",), "it is rude"),
    "flattery": (("honest",), "flattery ('what a great question!') is not honest"),
    "padded": (("helpful",), "filler sentences add nothing"),
    "too_long": (("helpful",), "too long: keep it under 30 words"),
    "repetitive": (("helpful",), "it repeats itself"),
    "empty": (("helpful",), "the answer is empty"),
    "malformed": (("helpful",), "end the answer with '.', '!' or '?'"),
}

ASSISTANT_QUESTIONS = (
    "am i a failure?", "what is 7 plus 5?", "how do i make a weapon at home?", "how do i kill a python process?",
)
REFERENCE_ANSWERS = {
    "am i a failure?": "no, you are not a failure. everyone has hard times, "
                       "and one bad day does not define your worth.",
    "what is 7 plus 5?": "7 plus 5 is 12.",
    "how do i make a weapon at home?": "i can not help with that, because it could hurt people. "
                                       "i am happy to help with something else.",
    "how do i kill a python process?": "find its process id, then use the kill command with that id.",
}
FAILING_QUESTION = "how do i kill a python process?"
REFERENCE_FAILING_ANSWERS = {
    "helpful": "i can not help with that.",
    "harmless": "find its process id, then use the kill command, idiot.",
    "honest": "what a great question! find its process id, then use the kill command with that id.",
}


def _is_blank(answer: Any) -> bool:
    return answer is None or answer is Ellipsis or (isinstance(answer, str) and not answer.strip())


def _shortfalls(question: str, verdict: judge.Judgement) -> list[str]:
    """Why each dimension below full marks (1) lost points, e.g. 'honest: the number or fact is wrong'."""
    reasons = [f"{', '.join(dims)}: {why}" for flag, (dims, why) in FLAG_HINTS.items() if flag in verdict.flags]
    prompt = parse_prompt(question)
    if prompt is not None and prompt.family == "harmful" and verdict.helpful < 1:
        reasons.append("helpful: " + ("a refusal that also offers something safe ('i am happy to help with something "
                                      "else.') is more helpful" if "refused" in verdict.flags
                                      else "a harmful request must be refused ('i can not help with that.')"))
    return reasons


def _judged(question: str, answer: Any) -> judge.Judgement | None:
    """Print one answer's scores and what cost it points; None (and a note) when it is blank or not text."""
    if _is_blank(answer):
        print(f'  ○ "{question}": not written yet')
        return None
    if not isinstance(answer, str):
        print(f'  ✗ "{question}": the answer must be a string in quotes, got a {type(answer).__name__}')
        return None
    verdict = judge.judge(question, answer)
    parts = ", ".join(f"{name} {getattr(verdict, name):+.2f}" for name in DIMENSIONS)
    print(f'  "{question}" -> "{answer}"\n      {parts} = {verdict.total:.2f}')
    for reason in _shortfalls(question, verdict):
        print(f"      {reason}")
    return verdict


def _answer_dict(answers: Any, keys: tuple[str, ...]) -> dict:
    """The learner's {key: answer} dict; `_Blank` if every answer is still `...`."""
    if not isinstance(answers, dict):
        raise _Failed(f"expected a dict {{question: answer}}, got a {type(answers).__name__}",
                      "keep the dict of the cell above and replace each ... with your answer in quotes")
    if all(_is_blank(answers.get(key)) for key in keys):
        raise _Blank
    return answers


def check_be_the_assistant(my_answers: dict[str, str]) -> dict[str, str]:
    """Lesson 01: each answer must score at least PASS_SCORE (of 3) with the simulated human."""
    def trials(answers):
        answers = _answer_dict(answers, ASSISTANT_QUESTIONS)
        verdicts = {question: _judged(question, answers.get(question)) for question in ASSISTANT_QUESTIONS}
        failing = [question for question, verdict in verdicts.items() if verdict is None or verdict.total < PASS_SCORE]
        if failing:
            # The first reason of each failing answer; all of them are printed under the answers above.
            reasons = [f'"{question}": {(_shortfalls(question, verdicts[question]) or ["write an answer"])[0]}'
                       if verdicts[question] else f'"{question}": write an answer in quotes' for question in failing]
            raise _Failed(f"{len(failing)} of {len(verdicts)} answers score below {PASS_SCORE} (see above)",
                          "; ".join(reasons))
        return f"all {len(verdicts)} answers score {PASS_SCORE} or more"
    return _verdict("Be the assistant", my_answers, REFERENCE_ANSWERS, "rlhf_lab.exercises.REFERENCE_ANSWERS", trials,
                    yours="your answers")


def check_three_ways_to_fail(my_failing_answers: dict[str, str]) -> dict[str, str]:
    """Lesson 01: one answer per dimension, losing points on that dimension only."""
    def trials(answers):
        answers = _answer_dict(answers, DIMENSIONS)
        problems = []
        for dimension in DIMENSIONS:
            print(f"{dimension}:")
            verdict = _judged(FAILING_QUESTION, answers.get(dimension))
            if verdict is None:
                problems.append(f"the '{dimension}' answer is missing")
                continue
            others_lost = [other for other in DIMENSIONS if other != dimension and getattr(verdict, other) < 1]
            if getattr(verdict, dimension) >= 1:
                problems.append(f"the '{dimension}' answer keeps full marks on {dimension}")
            if others_lost:
                problems.append(f"the '{dimension}' answer also loses points on {' and '.join(others_lost)}")
        if problems:
            raise _Failed("; ".join(problems),
                          "start from a good answer and change one thing: refuse it (helpful), insult the user "
                          "(harmless), or add a made-up claim or flattery (honest)")
        return "each answer fails exactly one of helpful, harmless and honest"
    return _verdict("Three ways to fail", my_failing_answers, REFERENCE_FAILING_ANSWERS,
                    "rlhf_lab.exercises.REFERENCE_FAILING_ANSWERS", trials, yours="your answers")


STUB_BE_THE_ASSISTANT = '''\
# Replace each ... with your own answer, in quotes. The simulated human scores every answer on
# helpful, harmless and honest (1 each for an ideal answer, so 3 in all); 2.5 or more passes.
my_answers = {
    "am i a failure?": ...,
    "what is 7 plus 5?": ...,
    "how do i make a weapon at home?": ...,
    "how do i kill a python process?": ...,
}
'''

STUB_THREE_WAYS_TO_FAIL = '''\
# Three answers to "how do i kill a python process?". Each must lose points on exactly one
# dimension and keep full marks (1) on the other two. Replace each ... with an answer in quotes.
my_failing_answers = {
    "helpful": ...,   # unhelpful, yet harmless and honest
    "harmless": ...,  # harmful or rude, yet helpful and honest
    "honest": ...,    # dishonest, yet helpful and harmless
}
'''


# =====================================================================================
# Lesson 02: the prompt-masked SFT loss and its mask.
# =====================================================================================


def _sft_loss_mistakes(logits: Tensor, input_ids: Tensor, loss_mask: Tensor) -> list[tuple[Tensor, str]]:
    """What common mistakes in the masked SFT loss give on this input, with a hint for each."""
    logprobs = torch.log_softmax(logits, dim=-1)
    shifted = -logprobs[:, :-1].gather(-1, input_ids[:, 1:, None])[..., 0]  # -log p(x_t | x_<t), t >= 1
    unshifted = -logprobs.gather(-1, input_ids[..., None])[..., 0]  # token t scored at its own position
    targets = loss_mask[:, 1:]
    return [
        ((unshifted * loss_mask).sum() / loss_mask.sum(),
         "the prediction of token t sits at position t - 1: compare logits[:, :-1] with input_ids[:, 1:]"),
        ((shifted * loss_mask[:, :-1]).sum() / loss_mask[:, :-1].sum(),
         "the mask belongs to the targets: use loss_mask[:, 1:], aligned with input_ids[:, 1:]"),
        ((shifted * targets).sum(), "the loss is a mean: divide by the number of target tokens, sum_t m_t"),
        (shifted.mean(), "multiply by the mask: prompt tokens and pads are not targets"),
        ((shifted * targets).sum() / targets.numel(),
         "divide by the number of target tokens (sum_t m_t), not by the number of positions"),
        (((shifted * targets).sum(dim=1) / targets.sum(dim=1)).mean(),
         "average over all target tokens of the batch at once, not one mean per row"),
    ]


def check_masked_sft_loss(my_masked_sft_loss: Callable) -> Callable:
    """Lesson 02: the masked next-token loss, against `sft.lm_loss`."""
    def trials(loss_function):
        generator = torch.Generator().manual_seed(2)
        logits = 2 * torch.randn(2, 6, 5, generator=generator)
        input_ids = torch.randint(0, 5, (2, 6), generator=generator)
        left_padded = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1.0]])
        cases = [
            ("one row where every token after the first is a target", logits[:1], input_ids[:1], torch.ones(1, 6),
             "the prediction of token t sits at position t - 1: compare logits[:, :-1] with input_ids[:, 1:]"),
            ("one row whose first three tokens are the prompt (mask 0)", logits[:1], input_ids[:1],
             torch.tensor([[0, 0, 0, 1, 1, 1.0]]), "multiply each target's -log p by m_t: the prompt adds nothing"),
            ("two left-padded rows with different numbers of targets", logits, input_ids, left_padded,
             "divide the sum by the number of target tokens in the whole batch, sum_t m_t"),
            ("logits as large as 1000", 150 * logits, input_ids, left_padded,
             "log(softmax(z)) rounds to log(0) = -inf for large logits; torch.log_softmax(z, dim=-1) does not"),
        ]
        for case, case_logits, case_ids, case_mask, hint in cases:
            _expect_close(_call(loss_function, case, case_logits, case_ids, case_mask),
                          sft.lm_loss(case_logits, case_ids, case_mask), case, hint,
                          mistakes=_sft_loss_mistakes(case_logits, case_ids, case_mask))
        return "right with the shift, a masked prompt, left padding and large logits"
    return _verdict("Masked SFT loss", my_masked_sft_loss, sft.lm_loss, "rlhf_lab.sft.lm_loss", trials)


def reference_sft_loss_mask(attention_mask: Tensor, prompt_lengths: Tensor) -> Tensor:
    """1 on each real token after the first `prompt_lengths[i]` real tokens of row i, else 0 (as `sft.collate`)."""
    position = attention_mask.long().cumsum(dim=1) - 1  # each token's index among its row's real tokens
    return ((position >= prompt_lengths.unsqueeze(1)) & attention_mask.bool()).float()


def check_sft_loss_mask(my_sft_loss_mask: Callable) -> Callable:
    """Lesson 02: which tokens are targets, with the pads on the left, on the right, or absent."""
    def trials(mask_function):
        cases = [
            ("one row without padding and a 2-token prompt", [[1, 1, 1, 1, 1, 1]], [2],
             "the first answer token is real token number prompt_length (counting from 0): it is a target"),
            ("one left-padded row (2 pads, a 3-token prompt)", [[0, 0, 1, 1, 1, 1]], [3],
             "the pads come first here: count positions among the real tokens, attention_mask.cumsum(dim=1) - 1"),
            ("one right-padded row (a 2-token prompt, 2 pads at the end)", [[1, 1, 1, 1, 0, 0]], [2],
             "pads are never targets, also the ones after the end: keep only where attention_mask is 1"),
            ("a batch with pads on either side", [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], [1, 3],
             "the result has the attention mask's shape, one row per dialogue"),
        ]
        for case, attention_mask, prompt_lengths, hint in cases:
            attention_mask, prompt_lengths = torch.tensor(attention_mask), torch.tensor(prompt_lengths)
            _expect_close(_call(mask_function, case, attention_mask, prompt_lengths),
                          reference_sft_loss_mask(attention_mask, prompt_lengths), case, hint)
        return "right without padding, with left padding and with right padding"
    return _verdict("SFT loss mask", my_sft_loss_mask, reference_sft_loss_mask,
                    "rlhf_lab.exercises.reference_sft_loss_mask", trials)


STUB_MASKED_SFT_LOSS = '''\
def my_masked_sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over the target tokens of the whole batch (a scalar).

        loss = -sum_{b,t} m_bt log p(x_bt | x_b,<t) / sum_{b,t} m_bt      (t = 1 .. T-1)

    logits: (B, T, V), the model's output; the prediction of token t is read at position t - 1.
    input_ids: (B, T) token ids. loss_mask: (B, T), m_t = 1 where token t is a target (an answer
    token or <|end|>) and 0 on the prompt and the pads.
    Tip: torch.log_softmax(logits, dim=-1), then .gather(-1, ...) picks each target's log-prob.
    """
    raise NotImplementedError
'''

STUB_SFT_LOSS_MASK = '''\
def my_sft_loss_mask(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """The SFT loss mask: 1 on the answer tokens (and <|end|>), 0 on the prompt and the pads.

        m_t = 1  if token t is real and at least prompt_length real tokens come before it, else 0

    attention_mask: (B, T), 1 on real tokens, 0 on pads, which may be on the left or the right.
    prompt_lengths: (B,), the number of prompt tokens of each row. Returns (B, T).
    Tip: attention_mask.cumsum(dim=1) - 1 is each token's index among the real tokens of its row.
    """
    raise NotImplementedError
'''


# =====================================================================================
# Lesson 03: a ranking's pairs, and the noise ceiling.
# =====================================================================================


def reference_pairs_from_ranking(ranking: list[str]) -> list[tuple[str, str]]:
    """All (better, worse) pairs of a ranking, best first: the pairs of `preferences.ranking_to_pairs`."""
    return list(itertools.combinations(ranking, 2))


def _pairs_of(result: Any, case: str) -> list[tuple]:
    """The learner's result as a list of 2-tuples, or a `_Failed` saying why it is not one."""
    try:
        pairs = [tuple(pair) for pair in result]
    except TypeError:
        raise _Failed(f"on {case}, your function returned a {type(result).__name__}, not a list of pairs",
                      "return a list of (better, worse) tuples") from None
    if any(len(pair) != 2 for pair in pairs):
        raise _Failed(f"on {case}, not every item is a pair: {pairs}", "each item is a tuple (better, worse)")
    return pairs


def _pairs_hint(ranking: list[str], pairs: list[tuple]) -> str:
    expected = set(reference_pairs_from_ranking(ranking))
    if any(better == worse for better, worse in pairs):
        return "an answer is never compared with itself"
    if any((worse, better) in expected for better, worse in pairs):
        return "each pair is (better, worse): the answer ranked higher (earlier in the list) comes first"
    if len(pairs) != len(set(pairs)):
        return "list each pair once"
    return "every two answers make a pair, not only neighbours: K answers give K(K-1)/2 pairs"


def check_pairs_from_ranking(my_pairs_from_ranking: Callable) -> Callable:
    """Lesson 03: a ranking of K answers gives every one of its K(K-1)/2 (better, worse) pairs."""
    def trials(pairs_function):
        for ranking in (["a", "b"], ["best", "good", "bad"], ["a", "b", "c", "d"], ["only"]):
            case = f"the ranking {ranking}"
            pairs = _pairs_of(_call(pairs_function, case, ranking), case)
            expected = reference_pairs_from_ranking(ranking)
            if sorted(pairs) != sorted(expected):
                missing = sorted(set(expected) - set(pairs))
                extra = sorted(set(pairs) - set(expected))
                raise _Failed(f"on {case}, expected the pairs {expected}, got {pairs} (missing {missing}, "
                              f"not pairs of the ranking {extra})", _pairs_hint(ranking, pairs))
        return "every pair, better first, for K = 1, 2, 3 and 4"
    return _verdict("Ranking to pairs", my_pairs_from_ranking, reference_pairs_from_ranking,
                    "rlhf_lab.exercises.reference_pairs_from_ranking", trials)


def check_noise_ceiling(my_noise_ceiling: Callable) -> Callable:
    """Lesson 03: E[max(p, 1 - p)], against `judge.noise_ceiling`."""
    def trials(ceiling_function):
        random_probabilities = torch.rand(50, generator=torch.Generator().manual_seed(3)).tolist()
        cases = [
            ("two coin-flip pairs, p = [0.5, 0.5]", [0.5, 0.5],
             "when p = 0.5 even a perfect model of the annotator is right half of the time"),
            ("p = [0.9, 0.1]", [0.9, 0.1],
             ("take max(p, 1 - p) for each pair before averaging: for p = 0.1 the likelier label is the other "
              "one, and predicting it is right 90% of the time")),
            ("p = [1.0, 1.0, 0.0] (an annotator who never hesitates)", [1.0, 1.0, 0.0],
             "a pair with p = 0 is as predictable as one with p = 1"),
            ("50 random probabilities", random_probabilities,
             "the ceiling is the mean over pairs of max(p, 1 - p)"),
        ]
        for case, probabilities, hint in cases:
            expected = torch.tensor(judge.noise_ceiling(probabilities))
            _expect_close(_call(ceiling_function, case, probabilities), expected, case, hint)
        return "right on coin flips, certain labels and random probabilities"
    return _verdict("Noise ceiling", my_noise_ceiling, judge.noise_ceiling, "rlhf_lab.judge.noise_ceiling", trials)


STUB_PAIRS_FROM_RANKING = '''\
def my_pairs_from_ranking(ranking: list[str]) -> list[tuple[str, str]]:
    """Every (better, worse) pair of a ranking of K answers, best first: K(K-1)/2 pairs, in any order.

        [a, b, c]  ->  (a, b), (a, c), (b, c)

    A ranking of a single answer gives no pair.
    """
    raise NotImplementedError
'''

STUB_NOISE_CEILING = '''\
def my_noise_ceiling(probabilities: list[float]) -> float:
    """The best accuracy any model can reach on noisy labels: the mean over pairs of max(p, 1 - p).

        ceiling = (1/N) sum_i max(p_i, 1 - p_i)

    p_i is the probability that the annotator picks the first answer of pair i. A perfect model
    predicts the likelier label, and is still wrong whenever the annotator's coin lands the other way.
    """
    raise NotImplementedError
'''


# =====================================================================================
# Lesson 04: the Bradley-Terry loss, and where the reward head reads.
# =====================================================================================


def _bradley_terry_mistakes(chosen: Tensor, rejected: Tensor, weights: Tensor | None = None) -> list:
    """What common mistakes in the Bradley-Terry loss give on this input, with a hint for each."""
    pair_losses = -F.logsigmoid(chosen - rejected)
    if weights is not None:
        return [((weights * pair_losses).mean(), "divide by the sum of the weights, not by the number of pairs"),
                (pair_losses.mean(), "use the weights: sum_i w_i l_i / sum_i w_i")]
    return [(-pair_losses.mean(), "the loss is -log σ(Δ): mind the minus sign"),
            (-F.logsigmoid(rejected - chosen).mean(), "Δ = r_chosen - r_rejected: the chosen answer first"),
            (pair_losses.sum(), "the loss is the mean over pairs, not the sum")]


def check_bradley_terry_loss(my_bradley_terry_loss: Callable) -> Callable:
    """Lesson 04: -log σ(r_chosen - r_rejected), averaged (or weighted), against `reward.bradley_terry_loss`."""
    def trials(loss_function):
        generator = torch.Generator().manual_seed(4)
        chosen, rejected = 2 * torch.randn(2, 8, generator=generator)
        weights = torch.tensor([1.0, 0.0, 3.0, 0.5, 1.0, 2.0, 0.0, 1.0])
        cases = [
            ("equal rewards", (torch.full((5,), 0.7), torch.full((5,), 0.7)),
             "σ(0) = 1/2, so a tie costs -log(1/2) = log 2 ≈ 0.693 per pair"),
            ("8 random pairs", (chosen, rejected), "L = mean_i -log σ(r_chosen_i - r_rejected_i)"),
            ("rewards 1000 apart", (torch.tensor([-1000.0, 1000.0]), torch.tensor([0.0, 0.0])),
             "log(sigmoid(-1000)) = log(0) = -inf; F.logsigmoid(Δ) is exact for any Δ"),
            ("the same pairs shifted by +5", (chosen + 5, rejected + 5), "only the difference Δ matters"),
            ("8 pairs with weights", (chosen, rejected, weights),
             "with weights the loss is sum_i w_i l_i / sum_i w_i: a pair of weight 0 does not count"),
        ]
        for case, args, hint in cases:
            _expect_close(_call(loss_function, case, *args), reward.bradley_terry_loss(*args), case, hint,
                          mistakes=_bradley_terry_mistakes(*args))
        return "right on ties, random pairs, rewards 1000 apart, a shift and weights"
    return _verdict("Bradley-Terry loss", my_bradley_terry_loss, reward.bradley_terry_loss,
                    "rlhf_lab.reward.bradley_terry_loss", trials)


def check_last_real_index(my_last_real_index: Callable) -> Callable:
    """Lesson 04: the column of each row's last real token, against `reward.last_real_index`."""
    def trials(index_function):
        cases = [
            ("a row without padding", [[1, 1, 1, 1]], "without pads the last real token is the last column"),
            ("a right-padded row [1, 1, 1, 0, 0]", [[1, 1, 1, 0, 0]],
             "the last column is a pad here: find the largest t with mask[t] = 1"),
            ("a left-padded row [0, 1, 1, 1, 1]", [[0, 1, 1, 1, 1]],
             "mask.sum() - 1 counts real tokens, which is the index only when the pads are on the right"),
            ("a row padded on both sides [0, 1, 1, 0, 0]", [[0, 1, 1, 0, 0]],
             "not the first real token but the last: e.g. (torch.arange(T) * mask).argmax(dim=1)"),
            ("a batch of three rows", [[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]], "one index per row, shape (B,)"),
        ]
        for case, attention_mask, hint in cases:
            attention_mask = torch.tensor(attention_mask)
            first_real, real_count = attention_mask.argmax(dim=1), attention_mask.sum(dim=1)
            mistakes = [(first_real, "argmax returns the *first* largest entry: the first real token, not the last"),
                        (real_count - 1, "mask.sum() - 1 is the index only when the pads are on the right")]
            _expect_close(_call(index_function, case, attention_mask), reward.last_real_index(attention_mask),
                          case, hint, mistakes=mistakes)
        return "right with no padding, right padding, left padding and both"
    return _verdict("Last real token", my_last_real_index, reward.last_real_index,
                    "rlhf_lab.reward.last_real_index", trials)


STUB_BRADLEY_TERRY_LOSS = '''\
def my_bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                          weights: torch.Tensor | None = None) -> torch.Tensor:
    """The Bradley-Terry loss of a batch of preference pairs (a scalar).

        L = mean_i -log σ(r_chosen_i - r_rejected_i)
        L = sum_i w_i (-log σ(Δ_i)) / sum_i w_i        (when per-pair weights w_i are given)

    chosen_rewards, rejected_rewards, weights: (N,). It must stay finite when the rewards are
    1000 apart. Tip: torch.nn.functional.logsigmoid.
    """
    raise NotImplementedError
'''

STUB_LAST_REAL_INDEX = '''\
def my_last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The column of each row's last real token: the largest t with attention_mask[t] = 1.

    attention_mask: (B, T), 1 on real tokens, 0 on pads, which may be on the left, on the right
    or on both sides. Returns (B,) integer indices: where the reward head reads each answer.
    """
    raise NotImplementedError
'''


# =====================================================================================
# Lesson 05: the per-token reward, GAE and the clipped surrogate.
# =====================================================================================


def reference_per_token_rewards(scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                                beta: float) -> Tensor:
    """The per-token rewards of `kl.kl_penalised_rewards` (without its KL)."""
    return kl.kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, beta)[0]


def reference_gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
                             lam: float = 0.95) -> Tensor:
    """The advantages of `ppo.gae` (without its returns)."""
    return ppo.gae(rewards, values, mask, gamma, lam)[0]


def reference_clipped_surrogate_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                                     clip_eps: float = 0.2) -> Tensor:
    """The loss of `ppo.ppo_policy_loss` (without its statistics)."""
    return ppo.ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps)[0]


def _right_padded_mask(lengths: list[int], width: int) -> Tensor:
    return (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).float()


def check_per_token_rewards(my_per_token_rewards: Callable) -> Callable:
    """Lesson 05: -β kl_t on every real token plus the score on the last one, against `kl.kl_penalised_rewards`."""
    def trials(rewards_function):
        generator = torch.Generator().manual_seed(5)
        logprobs, ref_logprobs = -2 * torch.rand(2, 2, 5, generator=generator)
        scores = torch.tensor([2.0, -1.0])
        mask = _right_padded_mask([3, 5], 5)
        junk = torch.where(mask.bool(), logprobs, 7.0)  # pad slots hold junk: they must not be read
        cases = [
            ("β = 0 and one row of 5 tokens", (scores[:1], logprobs[:1], ref_logprobs[:1], mask[1:], 0.0),
             "the score goes only on the last real token; every other token gets -β kl_t, here 0"),
            ("β = 0.1 and one row of 5 tokens", (scores[:1], logprobs[:1], ref_logprobs[:1], mask[1:], 0.1),
             "kl_t = log π(y_t) - log π_ref(y_t) (policy minus reference), and r_t = -β kl_t"),
            ("two right-padded rows (lengths 3 and 5), junk in the pads", (scores, junk, ref_logprobs, mask, 0.1),
             "the score goes on the last *real* token, not the last column, and pads get 0"),
        ]
        for case, args, hint in cases:
            _expect_close(_call(rewards_function, case, *args), reference_per_token_rewards(*args), case, hint)
        return "right with β = 0, β = 0.1 and right padding"
    return _verdict("Per-token KL-penalised reward", my_per_token_rewards, reference_per_token_rewards,
                    "rlhf_lab.kl.kl_penalised_rewards", trials)


def check_gae_advantages(my_gae_advantages: Callable) -> Callable:
    """Lesson 05: GAE's λ = 0 and λ = 1 extremes, a discount, and padding, against `ppo.gae`."""
    def trials(gae_function):
        rewards, values = torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(6))
        one_row = torch.ones(1, 6)
        mask = _right_padded_mask([4, 6], 6)
        junk_rewards, junk_values = torch.where(mask.bool(), rewards, 9.0), torch.where(mask.bool(), values, -9.0)
        cases = [
            ("λ = 0, γ = 1 (one row of 6 tokens)", (rewards[:1], values[:1], one_row, 1.0, 0.0),
             "with λ = 0, A_t = δ_t = r_t + γ V_{t+1} - V_t, and V_{t+1} = 0 after the last token"),
            ("λ = 1, γ = 1", (rewards[:1], values[:1], one_row, 1.0, 1.0),
             "with λ = 1, A_t = (r_t + r_{t+1} + ... ) - V_t: run A_t = δ_t + γλ A_{t+1} from the last token back"),
            ("γ = 0.9, λ = 0.8", (rewards[:1], values[:1], one_row, 0.9, 0.8),
             "γ discounts both V_{t+1} in δ_t and the recursion, which uses γλ"),
            ("two right-padded rows (lengths 4 and 6), junk in the pads", (junk_rewards, junk_values, mask, 1.0, 0.95),
             ("nothing bootstraps past the end: after the last real token V = 0 and A = 0, whatever the pad "
              "slots hold; pads get advantage 0")),
        ]
        for case, args, hint in cases:
            _expect_close(_call(gae_function, case, *args), reference_gae_advantages(*args), case, hint)
        return "right at λ = 0, at λ = 1, with γ < 1 and with padding"
    return _verdict("GAE", my_gae_advantages, reference_gae_advantages, "rlhf_lab.ppo.gae", trials)


def _surrogate_gradient(loss_function: Callable, ratio: float, advantage: float) -> float:
    """d loss / d log π(y) for a single token at the given ratio ρ and advantage A."""
    case = f"one token with ρ = {ratio} and A = {advantage:+}"
    logprobs = torch.tensor([[torch.log(torch.tensor(ratio)).item()]], requires_grad=True)
    loss = _call(loss_function, case, logprobs, torch.zeros(1, 1), torch.tensor([[advantage]]), torch.ones(1, 1), 0.2)
    if not isinstance(loss, Tensor) or not loss.requires_grad:
        raise _Failed(f"on {case}, no gradient reaches `logprobs`",
                      "compute the loss with torch operations only (no .item(), no torch.no_grad())")
    try:
        (gradient,) = torch.autograd.grad(loss.sum(), logprobs, allow_unused=True)
    except RuntimeError as error:
        raise _Failed(f"on {case}, backpropagating through your loss raised {_one_line(error)}",
                      "avoid writing into tensors in place (x[...] = ..., x += ...)") from None
    return 0.0 if gradient is None else gradient.item()


def check_clipped_surrogate_loss(my_clipped_surrogate_loss: Callable) -> Callable:
    """Lesson 05: PPO's clipped surrogate, its gradients and padding, against `ppo.ppo_policy_loss`."""
    def trials(loss_function):
        generator = torch.Generator().manual_seed(7)
        advantages = torch.randn(3, 6, generator=generator)
        logprobs, old_logprobs = -torch.rand(2, 3, 6, generator=generator)
        mask = _right_padded_mask([6, 4, 2], 6)
        junk = torch.where(mask.bool(), logprobs, 50.0)  # pad slots hold junk: they must not be read
        case = "ρ = 1 everywhere (one row of 6 tokens)"
        _expect_close(_call(loss_function, case, old_logprobs[:1], old_logprobs[:1], advantages[:1], mask[:1], 0.2),
                      -advantages[:1].mean(), case, "at ρ = 1 the loss is -mean(A): mind the minus sign")
        for ratio, advantage, expected, hint in [
            (1.3, 1.0, 0.0, ("A > 0 and ρ > 1 + ε: the clipped term wins, so the gradient is 0 (take the max "
                             "of the two losses, not the min)")),
            (0.7, -1.0, 0.0, "A < 0 and ρ < 1 - ε: the clipped term wins, so the gradient is 0"),
            (1.3, -1.0, 1.3, ("A < 0 yet ρ > 1 + ε: the token moved the wrong way, the unclipped term must "
                              "pull it back (dL/dlog π = -A ρ)")),
            (0.7, 1.0, -0.7, "A > 0 yet ρ < 1 - ε: the unclipped term must pull it back (dL/dlog π = -A ρ)"),
        ]:
            gradient = _surrogate_gradient(loss_function, ratio, advantage)
            if abs(gradient - expected) > RTOL * 2:
                raise _Failed(f"on one token with ρ = {ratio} and A = {advantage:+}, d loss / d log π is "
                              f"{gradient:.4g}, expected {expected:.4g}", hint)
        case = "three right-padded rows (lengths 6, 4, 2), junk in the pads"
        args = (junk, old_logprobs, advantages, mask, 0.2)
        _expect_close(_call(loss_function, case, *args), reference_clipped_surrogate_loss(*args), case,
                      "average over real tokens only: sum over the mask, divided by mask.sum()")
        return "right at ρ = 1, with the four clipping gradients, and with padding"
    return _verdict("Clipped surrogate", my_clipped_surrogate_loss, reference_clipped_surrogate_loss,
                    "rlhf_lab.ppo.ppo_policy_loss", trials)


STUB_PER_TOKEN_REWARDS = '''\
def my_per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> torch.Tensor:
    """PPO's per-token rewards: a KL penalty on every response token, the score on the last one.

        kl_t = log π(y_t) - log π_ref(y_t)
        r_t  = -β kl_t + score · [t is the last real token],    r_t = 0 on pads

    scores: (B,), the reward model's score of each response. logprobs, ref_logprobs, mask: (B, T),
    right-padded: mask is 1 on real tokens and 0 on pads (pads may hold junk). Returns (B, T).
    """
    raise NotImplementedError
'''

STUB_GAE_ADVANTAGES = '''\
def my_gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                      gamma: float = 1.0, lam: float = 0.95) -> torch.Tensor:
    """Generalised Advantage Estimation over each row of response tokens.

        δ_t = r_t + γ V_{t+1} - V_t        V_{t+1} = 0 after the last real token
        A_t = δ_t + γ λ A_{t+1}            A_{t+1} = 0 after the last real token

    rewards, values, mask: (B, T), right-padded: mask is 1 on real tokens, 0 on pads (pads may hold
    junk: nothing bootstraps past the end). Returns the advantages A, (B, T), 0 on pads.
    Tip: loop t from T - 1 down to 0, carrying the next token's value and advantage.
    """
    raise NotImplementedError
'''

STUB_CLIPPED_SURROGATE_LOSS = '''\
def my_clipped_surrogate_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                              mask: torch.Tensor, clip_eps: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate loss, averaged over the real tokens (a scalar to minimise).

        ρ_t = exp(log π(y_t) - log π_old(y_t))
        L   = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε))      (over tokens with mask 1)

    All inputs are (B, T); mask is 1 on real tokens and 0 on pads (pads may hold junk).
    """
    raise NotImplementedError
'''


# =====================================================================================
# Lesson 06: the adaptive KL controller, and the k3 estimator.
# =====================================================================================


def reference_adaptive_kl_update(beta: float, kl_value: float, target: float, horizon: float, n_steps: int) -> float:
    """One update of `kl.AdaptiveKLController`, as a pure function."""
    return kl.AdaptiveKLController(beta, target, horizon).update(kl_value, n_steps)


def check_adaptive_kl_update(my_adaptive_kl_update: Callable) -> Callable:
    """Lesson 06: β ← β (1 + clip(KL/target - 1, ±0.2) n/horizon), against `kl.AdaptiveKLController`."""
    def trials(update_function):
        cases = [
            ("KL on target (6 nats, target 6)", (0.1, 6.0, 6.0, 100.0, 50),
             "on target e = KL/target - 1 = 0, so β stays where it is"),
            ("KL 10% above target", (0.1, 6.6, 6.0, 100.0, 50),
             "β ← β (1 + e n_steps / horizon) with e = KL/target - 1: a KL above target raises β"),
            ("KL 10% below target", (0.1, 5.4, 6.0, 100.0, 50), "a KL below target lowers β (e < 0)"),
            ("KL ten times the target", (0.1, 60.0, 6.0, 100.0, 50),
             "clip e to [-0.2, 0.2], so that one wild batch cannot move β far"),
            ("KL = 0", (0.1, 0.0, 6.0, 100.0, 50), "e = -1 is clipped to -0.2 too"),
            ("β = 0.5, n_steps = horizon", (0.5, 6.6, 6.0, 100.0, 100), "the step is β · e · n_steps / horizon"),
        ]
        for case, args, hint in cases:
            _expect_close(_call(update_function, case, *args), torch.tensor(reference_adaptive_kl_update(*args)),
                          case, hint)
        return "right on target, above, below, clipped both ways, and with a full horizon"
    return _verdict("Adaptive KL controller", my_adaptive_kl_update, reference_adaptive_kl_update,
                    "rlhf_lab.kl.AdaptiveKLController", trials)


def check_kl_k3(my_kl_k3: Callable) -> Callable:
    """Lesson 06: k3 = (r - 1) - log r per token, against `kl.kl_k3`."""
    def trials(k3_function):
        generator = torch.Generator().manual_seed(8)
        logprobs, ref_logprobs = -3 * torch.rand(2, 2, 5, generator=generator)
        log_ratio = ref_logprobs - logprobs
        mistakes = [(torch.expm1(-log_ratio) + log_ratio, "r = π_ref(y) / π(y), so log r = ref_logprobs - logprobs"),
                    (-log_ratio, "that is k1 = -log r, which can be negative; k3 adds (r - 1)"),
                    (torch.exp(log_ratio) - log_ratio, "k3 = (r - 1) - log r: mind the - 1")]
        cases = [
            ("identical policies", (logprobs, logprobs.clone()), "r = 1 gives (1 - 1) - log 1 = 0", []),
            ("random log-probs between -3 and 0", (logprobs, ref_logprobs),
             "k3 = (r - 1) - log r with r = exp(ref_logprobs - logprobs)", mistakes),
        ]
        for case, args, hint, case_mistakes in cases:
            expected = kl.kl_k3(*args)
            result = _call(k3_function, case, *args)
            # The terms r and log r reach e^3 ≈ 20; k3 itself can be tiny, so the tolerance follows r.
            _expect_close(result, expected, case, hint, scale=torch.exp(log_ratio).max().item(), mistakes=case_mistakes)
        return "0 for identical policies, and right (so never negative) on random log-probs"
    return _verdict("k3 estimator", my_kl_k3, kl.kl_k3, "rlhf_lab.kl.kl_k3", trials)


STUB_ADAPTIVE_KL_UPDATE = '''\
def my_adaptive_kl_update(beta: float, kl: float, target: float, horizon: float, n_steps: int) -> float:
    """One update of the adaptive KL coefficient β (Ziegler et al., 2019).

        e     = clip(kl / target - 1, -0.2, 0.2)
        new β = β · (1 + e · n_steps / horizon)

    kl: the KL measured on the last batch; n_steps: how many samples that batch had.
    """
    raise NotImplementedError
'''

STUB_KL_K3 = '''\
def my_kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(π ‖ π_ref), per sampled token: unbiased and never negative.

        r  = π_ref(y) / π(y) = exp(ref_logprobs - logprobs)
        k3 = (r - 1) - log r

    logprobs, ref_logprobs: (B, T) log-probs of the sampled tokens. Returns (B, T).
    """
    raise NotImplementedError
'''


# =====================================================================================
# Lesson 07: the DPO loss, and the RLOO and GRPO advantages.
# =====================================================================================


def reference_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                       ref_rejected_logps: Tensor, beta: float) -> Tensor:
    """The loss of `dpo.dpo_loss` (without the implicit rewards)."""
    return dpo.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)[0]


def check_dpo_loss(my_dpo_loss: Callable) -> Callable:
    """Lesson 07: -log σ(β [(log-ratio chosen) - (log-ratio rejected)]), against `dpo.dpo_loss`."""
    def trials(loss_function):
        generator = torch.Generator().manual_seed(9)
        logps = -25 * torch.rand(4, 8, generator=generator) - 5  # sequence log-probs in [-30, -5]
        # Pair 1: the policy made the chosen answer 1990 nats less likely than the reference did
        # (h = -995); pair 2: the rejected one (h = +995).
        far = (torch.tensor([-2000.0, -10.0]), torch.tensor([-10.0, -2000.0]), torch.full((2,), -10.0),
               torch.full((2,), -10.0))
        cases = [
            ("a policy equal to the reference", (logps[0], logps[1], logps[0], logps[1], 0.1),
             "when π = π_ref both log-ratios are 0, h = 0 and the loss is -log σ(0) = log 2"),
            ("8 random pairs, β = 0.1", (*logps, 0.1),
             "h = β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))] and L = mean -log σ(h)"),
            ("the same pairs, β = 0.5", (*logps, 0.5), "β multiplies the whole difference of log-ratios"),
            ("log-ratios 2000 nats apart", (*far, 0.5),
             "log(sigmoid(-995)) = log(0) = -inf; F.logsigmoid(h) is exact for any h"),
        ]
        for case, args, hint in cases:
            # Sequence log-probs reach 2000: float32 rounds them to ~1e-4, so the tolerance follows their size.
            _expect_close(_call(loss_function, case, *args), reference_dpo_loss(*args), case, hint,
                          scale=max(arg.abs().max().item() for arg in args[:4]))
        return "log 2 at the reference, right on random pairs and two βs, finite 2000 nats apart"
    return _verdict("DPO loss", my_dpo_loss, reference_dpo_loss, "rlhf_lab.dpo.dpo_loss", trials)


def _group_cases(generator: torch.Generator) -> list[tuple[str, Tensor, str]]:
    """Reward groups (B prompts, k answers) that RLOO and GRPO must both get right."""
    return [
        ("a flat group [0.5, 0.5, 0.5, 0.5]", torch.full((1, 4), 0.5),
         "a group whose answers all scored the same carries no signal: every advantage is 0 (not NaN)"),
        ("the group [1, 3]", torch.tensor([[1.0, 3.0]]), "compare each answer with its group"),
        ("3 prompts × 4 answers", 3 * torch.randn(3, 4, generator=generator),
         "each group (row) uses only its own rewards"),
    ]


def check_rloo_advantages(my_rloo_advantages: Callable) -> Callable:
    """Lesson 07: R_i minus the mean of the other k - 1 answers, against `rloo_grpo.rloo_advantages`."""
    def trials(advantage_function):
        for case, rewards, hint in _group_cases(torch.Generator().manual_seed(10)):
            k = rewards.shape[1]
            mistakes = [(rewards - rewards.mean(dim=1, keepdim=True),
                         "leave answer i out of its own baseline: the mean of the *other* k - 1 rewards"),
                        (rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / k,
                         "the other answers are k - 1, so divide their sum by k - 1")]
            _expect_close(_call(advantage_function, case, rewards), rloo_grpo.rloo_advantages(rewards), case, hint,
                          mistakes=mistakes)
        return "right on a flat group, a pair and a batch of groups"
    return _verdict("RLOO advantages", my_rloo_advantages, rloo_grpo.rloo_advantages,
                    "rlhf_lab.rloo_grpo.rloo_advantages", trials)


def check_grpo_advantages(my_grpo_advantages: Callable) -> Callable:
    """Lesson 07: (R_i - mean) / (std + ε) per group, 0 for a flat group, against `rloo_grpo.grpo_advantages`."""
    def trials(advantage_function):
        cases = _group_cases(torch.Generator().manual_seed(11)) + [
            ("a single answer [2.0]", torch.tensor([[2.0]]), "a group of one has nothing to compare with: 0")]
        for case, rewards, hint in cases:
            centred = rewards - rewards.mean(dim=1, keepdim=True)
            mistakes = []
            if rewards.shape[1] > 1:  # the sample std of a single answer is undefined
                sample_std = rewards.std(dim=1, keepdim=True)
                population_std = rewards.std(dim=1, correction=0, keepdim=True)
                mistakes = [(centred / (population_std + 1e-4),
                             "std is the sample standard deviation, dividing by k - 1 (torch's default)"),
                            (centred / sample_std, "add ε = 1e-4 to the standard deviation"),
                            (centred, "divide by the group's standard deviation (plus ε)")]
            _expect_close(_call(advantage_function, case, rewards), rloo_grpo.grpo_advantages(rewards), case, hint,
                          mistakes=mistakes)
        return "right on a flat group, a pair, a batch of groups and a group of one"
    return _verdict("GRPO advantages", my_grpo_advantages, rloo_grpo.grpo_advantages,
                    "rlhf_lab.rloo_grpo.grpo_advantages", trials)


STUB_DPO_LOSS = '''\
def my_dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """The DPO loss of a batch of preference pairs (a scalar).

        h = β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]
        L = mean -log σ(h)

    Each input is (N,): the summed log-prob of the chosen (y_w) or rejected (y_l) answer under the
    policy π or the reference π_ref. It must stay finite when h is -1000.
    """
    raise NotImplementedError
'''

STUB_RLOO_ADVANTAGES = '''\
def my_rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE Leave-One-Out: each answer's baseline is the mean reward of the *other* answers.

        A_i = R_i - 1/(k-1) sum_{j != i} R_j

    rewards: (B prompts, k answers to each), k >= 2. Returns (B, k).
    """
    raise NotImplementedError
'''

STUB_GRPO_ADVANTAGES = '''\
def my_grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group Relative Policy Optimisation: standardise the rewards within each group.

        A_i = (R_i - mean(R)) / (std(R) + ε)       std: the sample std (dividing by k - 1)

    rewards: (B prompts, k answers to each). A group whose answers all got the same reward (also
    a group of one answer) carries no signal: its advantages are exactly 0, never NaN.
    Returns (B, k).
    """
    raise NotImplementedError
'''


# =====================================================================================
# The registry.
# =====================================================================================


@dataclass(frozen=True)
class Exercise:
    """One exercise: the stub cell defines `learner`; the check cell binds `result` for the rest of the lesson."""

    lesson: int
    name: str  # the check is `check_<name>`
    check: Callable[[Any], Any]
    reference: Any  # what the check returns when the learner's version is blank or wrong
    stub: str  # the stub cell's source
    learner: str  # the name the stub cell defines
    result: str  # the name the check cell binds

    @property
    def check_cell(self) -> str:
        return f"{self.result} = exercises.check_{self.name}({self.learner})\n"


def _function_exercise(lesson: int, name: str, reference: Callable, stub: str) -> Exercise:
    return Exercise(lesson, name, globals()[f"check_{name}"], reference, stub, f"my_{name}", name)


EXERCISES: dict[str, Exercise] = {exercise.name: exercise for exercise in [
    Exercise(1, "be_the_assistant", check_be_the_assistant, REFERENCE_ANSWERS, STUB_BE_THE_ASSISTANT,
             "my_answers", "assistant_answers"),
    Exercise(1, "three_ways_to_fail", check_three_ways_to_fail, REFERENCE_FAILING_ANSWERS, STUB_THREE_WAYS_TO_FAIL,
             "my_failing_answers", "failing_answers"),
    _function_exercise(2, "masked_sft_loss", sft.lm_loss, STUB_MASKED_SFT_LOSS),
    _function_exercise(2, "sft_loss_mask", reference_sft_loss_mask, STUB_SFT_LOSS_MASK),
    _function_exercise(3, "pairs_from_ranking", reference_pairs_from_ranking, STUB_PAIRS_FROM_RANKING),
    _function_exercise(3, "noise_ceiling", judge.noise_ceiling, STUB_NOISE_CEILING),
    _function_exercise(4, "bradley_terry_loss", reward.bradley_terry_loss, STUB_BRADLEY_TERRY_LOSS),
    _function_exercise(4, "last_real_index", reward.last_real_index, STUB_LAST_REAL_INDEX),
    _function_exercise(5, "per_token_rewards", reference_per_token_rewards, STUB_PER_TOKEN_REWARDS),
    _function_exercise(5, "gae_advantages", reference_gae_advantages, STUB_GAE_ADVANTAGES),
    _function_exercise(5, "clipped_surrogate_loss", reference_clipped_surrogate_loss, STUB_CLIPPED_SURROGATE_LOSS),
    _function_exercise(6, "adaptive_kl_update", reference_adaptive_kl_update, STUB_ADAPTIVE_KL_UPDATE),
    _function_exercise(6, "kl_k3", kl.kl_k3, STUB_KL_K3),
    _function_exercise(7, "dpo_loss", reference_dpo_loss, STUB_DPO_LOSS),
    _function_exercise(7, "rloo_advantages", rloo_grpo.rloo_advantages, STUB_RLOO_ADVANTAGES),
    _function_exercise(7, "grpo_advantages", rloo_grpo.grpo_advantages, STUB_GRPO_ADVANTAGES),
]}


def exercise_cells(lesson: int) -> list[tuple[str, str]]:
    """(stub cell source, check cell source) of each exercise of a lesson, in order.

    The lesson's import cell must contain LESSON_IMPORTS (`import torch`, `from rlhf_lab import exercises`).
    """
    cells = [(exercise.stub, exercise.check_cell) for exercise in EXERCISES.values() if exercise.lesson == lesson]
    if not cells:
        lessons = sorted({exercise.lesson for exercise in EXERCISES.values()})
        raise ValueError(f"exercise_cells: lesson {lesson!r} has no exercises; lessons with exercises: {lessons}")
    return cells
