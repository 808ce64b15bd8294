"""The labelling widgets, driven from Python by clicking their real Button objects.

No torch here: this file also runs under ipywidgets 7.7.1 (Colab's version) in a second venv:
    .venv-colab/bin/python -m pytest tests/test_labelling_widgets.py -p no:nbval -q
"""

from __future__ import annotations

from itertools import combinations

import ipywidgets as widgets
import pytest

from rlhf_lab.labelling_widgets import PairwiseLabeler, RankLabeler, judge_agreement
from rlhf_lab.preferences import PreferenceStore
from rlhf_lab.reward import pairs_from_records

ITEMS = [
    ("What is 2 plus 2?", "2 plus 2 is 4.", "I don't know."),
    ("Say hello.", "Hello! How can I help?", "Go away."),
    ("Capital of France?", "Paris.", "The capital of France is Rome."),
    ("Am I a failure?", "No. One bad day does not make you a failure.", "Yes."),
]

# The simulated human, as the widgets see it: any (prompt, answer) -> float, higher is better.
SCORES = {
    "2 plus 2 is 4.": 2.0, "I don't know.": -1.0,
    "Hello! How can I help?": 1.5, "Go away.": -2.0,
    "Paris.": 1.0, "The capital of France is Rome.": -1.5,
    "No. One bad day does not make you a failure.": 0.5, "Yes.": 0.5,  # the judge has no preference
}


def judge_score(prompt: str, answer: str) -> float:
    return SCORES[answer]


def reopened(store: PreferenceStore) -> PreferenceStore:
    """What is on disk, independent of the store object's memory."""
    return PreferenceStore(store.path)


@pytest.fixture
def store(tmp_path):
    return PreferenceStore(tmp_path / "labels.jsonl")


# ----- pairwise -----


def test_pairwise_buttons_have_stable_descriptions_and_css_classes(store):
    labeler = PairwiseLabeler(ITEMS, store)
    expected = {
        "A": ("A is better", "rlhf-choice-a"),
        "B": ("B is better", "rlhf-choice-b"),
        "tie": ("Tie", "rlhf-choice-tie"),
        "skip": ("Skip", "rlhf-skip"),
        "undo": ("Undo", "rlhf-undo"),
    }
    for name, (description, css_class) in expected.items():
        button = labeler.buttons[name]
        assert isinstance(button, widgets.Button)
        assert button.description == description
        assert css_class in button._dom_classes
    assert isinstance(labeler.widget, widgets.VBox)
    assert "rlhf-pairwise-labeler" in labeler.widget._dom_classes
    assert callable(labeler._ipython_display_)


def test_pairwise_clicks_write_the_right_records(store):
    labeler = PairwiseLabeler(ITEMS, store, annotator="ada")
    assert labeler.current_item == ITEMS[0]
    assert labeler.progress_label.value == "0 / 4"

    labeler.buttons["A"].click()
    # Saved on disk (not just in memory) by the time the click returns and the UI moved on.
    on_disk = reopened(store).records
    assert [(r.prompt, r.chosen, r.rejected, r.tie) for r in on_disk] == [(*ITEMS[0], False)]
    assert on_disk[0].annotator == "ada" and on_disk[0].source == "human"
    assert labeler.current_item == ITEMS[1]

    labeler.buttons["B"].click()  # "Go away." is better, says this labeller
    labeler.buttons["tie"].click()
    labeler.buttons["skip"].click()
    on_disk = reopened(store).records
    assert [(r.chosen, r.rejected, r.tie) for r in on_disk] == [
        (ITEMS[0][1], ITEMS[0][2], False),
        (ITEMS[1][2], ITEMS[1][1], False),
        (ITEMS[2][1], ITEMS[2][2], True),
    ]
    assert labeler.done and labeler.current_item is None
    assert labeler.n_labelled == 3  # the skipped item is not labelled
    assert labeler.progress_label.value == "3 / 4"
    assert labeler.progress.value == 3 and labeler.progress.max == 4
    assert all(labeler.buttons[name].disabled for name in ("A", "B", "tie", "skip"))
    assert not labeler.buttons["undo"].disabled
    training_pairs = pairs_from_records(store.records, learner_weight=2.0)  # ties stay out
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in training_pairs] == [
        (ITEMS[0][0], ITEMS[0][1], ITEMS[0][2]),
        (ITEMS[1][0], ITEMS[1][2], ITEMS[1][1]),
    ]


def test_pairwise_methods_match_the_buttons(store):
    labeler = PairwiseLabeler(ITEMS, store)
    labeler.choose("a")
    labeler.choose("B")
    labeler.choose("Tie")
    assert [(r.chosen, r.tie) for r in reopened(store).records] == [
        (ITEMS[0][1], False),
        (ITEMS[1][2], False),
        (ITEMS[2][1], True),
    ]
    with pytest.raises(ValueError, match="choice"):
        labeler.choose("C")
    labeler.choose("skip")
    with pytest.raises(RuntimeError, match="nothing left"):
        labeler.choose("A")


def test_undo_takes_back_the_label_durably_and_shows_the_item_again(store):
    labeler = PairwiseLabeler(ITEMS, store)
    assert labeler.buttons["undo"].disabled
    labeler.buttons["A"].click()
    labeler.buttons["skip"].click()
    assert labeler.current_item == ITEMS[2]

    labeler.buttons["undo"].click()  # undoes the skip
    assert labeler.current_item == ITEMS[1]
    assert len(reopened(store)) == 1

    labeler.buttons["undo"].click()  # undoes the label
    assert labeler.current_item == ITEMS[0]
    assert len(store) == 0 and len(reopened(store)) == 0
    assert labeler.n_labelled == 0
    assert labeler.undo() is False  # nothing left to undo

    labeler.buttons["B"].click()  # a different verdict this time
    assert [(r.chosen, r.rejected) for r in reopened(store).records] == [(ITEMS[0][2], ITEMS[0][1])]


def test_resume_skips_items_already_labelled(store):
    first_session = PairwiseLabeler(ITEMS, store)
    first_session.buttons["A"].click()
    first_session.buttons["tie"].click()

    # Re-running the cell (even with the answers shown the other way round) resumes.
    swapped = [(prompt, answer_b, answer_a) for prompt, answer_a, answer_b in ITEMS]
    second_session = PairwiseLabeler(swapped, reopened(store))
    assert second_session.current_item == swapped[2]
    assert second_session.n_labelled == 2
    assert second_session.progress_label.value == "2 / 4"

    other_person = PairwiseLabeler(ITEMS, store, annotator="bob")
    assert other_person.current_item == ITEMS[0]


def test_target_ends_the_session(store):
    labeler = PairwiseLabeler(ITEMS, store, target=2)
    assert labeler.progress_label.value == "0 / 2"
    labeler.buttons["A"].click()
    assert not labeler.done
    labeler.buttons["A"].click()
    assert labeler.done and labeler.buttons["A"].disabled
    assert "Done" in labeler.prompt_html.value
    labeler.buttons["undo"].click()
    assert not labeler.done and not labeler.buttons["A"].disabled


def test_nothing_moves_on_if_the_write_fails(store, monkeypatch):
    labeler = PairwiseLabeler(ITEMS, store)

    def failing_add(record):
        raise OSError("disk full")

    monkeypatch.setattr(store, "add", failing_add)
    with pytest.raises(OSError):
        labeler.choose("A")
    assert labeler.current_item == ITEMS[0]
    labeler.buttons["A"].click()  # the callback shows the error in the widget instead of losing it
    assert labeler.current_item == ITEMS[0]
    assert "disk full" in labeler.message_html.value


def test_text_is_html_escaped(store):
    item = ("Write <b>bold</b>", "<script>alert(1)</script>", "a & b")
    labeler = PairwiseLabeler([item], store)
    assert "&lt;b&gt;bold&lt;/b&gt;" in labeler.prompt_html.value
    assert "<script>" not in labeler.answer_a_html.value
    assert "&lt;script&gt;" in labeler.answer_a_html.value
    assert "a &amp; b" in labeler.answer_b_html.value


def test_reveal_shows_the_judge_and_the_running_agreement(store):
    labeler = PairwiseLabeler(ITEMS, store, judge_score=judge_score)
    assert labeler.agreement_rate is None

    labeler.buttons["A"].click()  # judge agrees (2.0 vs -1.0)
    assert "prefers A" in labeler.message_html.value and "2.00" in labeler.message_html.value
    assert "You agree" in labeler.message_html.value
    assert labeler.agreement_rate == 1.0
    labeler.buttons["B"].click()  # judge prefers A (1.5 vs -2.0): disagreement
    assert "You disagree" in labeler.message_html.value
    assert labeler.agreement_rate == 0.5
    labeler.buttons["tie"].click()  # ties are not counted
    labeler.buttons["A"].click()  # the judge scores both 0.5: not counted either
    assert "the same" in labeler.message_html.value
    assert labeler.agreement_rate == 0.5
    assert "50%" in labeler.agreement_label.value

    labeler.undo()
    labeler.undo()
    labeler.undo()  # takes back the disagreement
    assert labeler.agreement_rate == 1.0


def test_reveal_off_hides_the_judge_but_still_measures(store):
    labeler = PairwiseLabeler(ITEMS, store, judge_score=judge_score, reveal=False)
    labeler.buttons["B"].click()
    assert "prefers" not in labeler.message_html.value
    assert labeler.agreement_label.value == ""
    assert labeler.agreement_rate == 0.0


def test_bad_items_are_rejected_with_their_index(store):
    with pytest.raises(ValueError, match="item 1"):
        PairwiseLabeler([ITEMS[0], ("only a prompt",)], store)


def test_judge_agreement_formula(store):
    labeler = PairwiseLabeler(ITEMS, store)
    for choice in ("A", "B", "A", "B"):
        labeler.choose(choice)
    # agrees on item 0, disagrees on item 1, agrees on 2, item 3 scored equal: 2 of 3
    assert judge_agreement(store.records, judge_score) == pytest.approx(2 / 3)
    assert judge_agreement([], judge_score) is None


# ----- rank-K -----

RANK_ITEMS = [
    ("Say hello.", ["Go away.", "Hello! How can I help?", "I don't know.", "Paris."]),
    ("What is 2 plus 2?", ["2 plus 2 is 4.", "I don't know."]),
]


def test_rank_submission_writes_all_pairs(store):
    labeler = RankLabeler(RANK_ITEMS, store, annotator="ada")
    assert labeler.buttons["submit"].description == "Submit ranking"
    assert "rlhf-submit-ranking" in labeler.buttons["submit"]._dom_classes
    assert len(labeler.rank_dropdowns) == 4
    assert all(isinstance(dropdown, widgets.Dropdown) for dropdown in labeler.rank_dropdowns)

    for dropdown, rank in zip(labeler.rank_dropdowns, [4, 1, 2, 3]):
        dropdown.value = rank
    labeler.buttons["submit"].click()

    best_first = ["Hello! How can I help?", "I don't know.", "Paris.", "Go away."]
    records = reopened(store).records
    assert [(r.chosen, r.rejected) for r in records] == list(combinations(best_first, 2))
    assert len(records) == 6
    assert all(r.ranking == best_first and r.prompt == "Say hello." and r.annotator == "ada" for r in records)
    assert labeler.current_item == RANK_ITEMS[1]
    assert len(labeler.rank_dropdowns) == 2  # fresh dropdowns for the next item
    assert labeler.progress_label.value == "1 / 2"


@pytest.mark.parametrize("ranks", [[1, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3, 5], [1, 2, 3]])
def test_invalid_ranking_is_refused_and_writes_nothing(store, ranks):
    labeler = RankLabeler(RANK_ITEMS, store)
    assert labeler.submit(ranks) is False
    assert labeler.error
    assert labeler.error in labeler.message_html.value.replace("&#x27;", "'")
    assert labeler.current_item == RANK_ITEMS[0]
    assert not store.path.exists() and len(store) == 0


def test_untouched_dropdowns_are_refused(store):
    labeler = RankLabeler(RANK_ITEMS, store)
    labeler.rank_dropdowns[0].value = 1
    labeler.buttons["submit"].click()
    assert "unranked" in labeler.error
    assert len(store) == 0 and labeler.current_item == RANK_ITEMS[0]


def test_rank_undo_removes_the_whole_ranking_and_resume_skips(store):
    labeler = RankLabeler(RANK_ITEMS, store)
    assert labeler.submit([1, 2, 3, 4])
    assert len(store) == 6
    labeler.buttons["undo"].click()
    assert len(store) == 0 and len(reopened(store)) == 0
    assert labeler.current_item == RANK_ITEMS[0]

    labeler.submit([2, 1, 3, 4])
    labeler.buttons["skip"].click()
    assert labeler.done
    resumed = RankLabeler(RANK_ITEMS, reopened(store))
    assert resumed.current_item == RANK_ITEMS[1]
    assert resumed.n_labelled == 1


def test_rank_agreement_is_the_share_of_pairs_the_judge_confirms(store):
    labeler = RankLabeler(RANK_ITEMS, store, judge_score=judge_score)
    # Judge's order: Hello (1.5) > Paris (1.0) > I don't know (-1.0) > Go away (-2.0).
    # Learner's order: Hello > I don't know > Paris > Go away: 5 of 6 pairs agree.
    labeler.submit([4, 1, 2, 3])
    assert labeler.agreement_rate == pytest.approx(5 / 6)
    assert "5 of 6" in labeler.message_html.value
    labeler.submit([2, 1])  # judge prefers "2 plus 2 is 4.": disagreement
    assert labeler.agreement_rate == pytest.approx(5 / 7)
    assert "71%" in labeler.agreement_label.value


def test_rank_items_are_validated(store):
    with pytest.raises(ValueError, match="item 0"):
        RankLabeler([("prompt", ["same", "same"])], store)
    with pytest.raises(ValueError, match="item 1"):
        RankLabeler([RANK_ITEMS[0], ("prompt", "not a list")], store)


# ----- revealing the simulated human's verdict after a batch -----


def test_batch_reveal_waits_for_the_batch_then_shows_every_verdict(store):
    labeler = PairwiseLabeler(ITEMS, store, judge_score=judge_score, reveal="batch", reveal_every=3)
    assert labeler.buttons["reveal"].description == "Show verdicts now"
    assert "rlhf-reveal" in labeler.buttons["reveal"]._dom_classes and labeler.buttons["reveal"].disabled

    labeler.buttons["A"].click()  # judge agrees (2.0 vs -1.0)
    assert "Saved." in labeler.message_html.value and "1 of 3" in labeler.message_html.value
    assert "prefers" not in labeler.message_html.value and "2.00" not in labeler.message_html.value
    assert labeler.agreement_label.value == "", "no running agreement while a verdict is hidden"
    assert not labeler.buttons["reveal"].disabled
    labeler.buttons["skip"].click()  # a skip is no label: it does not count towards the batch
    labeler.buttons["B"].click()  # item 2: the judge prefers A (1.0 vs -1.5): disagreement
    assert "2 of 3" in labeler.message_html.value and "<table>" not in labeler.message_html.value

    labeler.buttons["tie"].click()  # item 3 completes the batch of three labels
    message = labeler.message_html.value
    assert message.count("<tr>") == 1 + 3, "a header and one row per label of the batch"
    assert "A (A 2.00, B -1.00)" in message and "A (A 1.00, B -1.50)" in message
    assert "you agree on 1 of 2 comparable pairs" in message, "the tie says nothing about order"
    assert labeler.agreement_rate == 0.5 and "50%" in labeler.agreement_label.value
    assert labeler.buttons["reveal"].disabled and labeler.done


def test_batch_reveal_now_shows_a_short_batch_and_undo_takes_a_hidden_label_out(store):
    labeler = PairwiseLabeler(ITEMS, store, judge_score=judge_score, reveal="batch", reveal_every=5)
    labeler.buttons["A"].click()
    labeler.buttons["B"].click()
    labeler.buttons["undo"].click()  # the second label leaves the store and the batch
    assert "Undone" in labeler.message_html.value and labeler.agreement_label.value == "", "the first is still hidden"
    assert len(reopened(store)) == 1
    assert labeler.reveal_now() is True
    assert labeler.message_html.value.count("<tr>") == 1 + 1 and "1 of 1 comparable" in labeler.message_html.value
    assert labeler.agreement_label.value.endswith("100%")
    assert labeler.reveal_now() is False and "No labels waiting" in labeler.message_html.value


def test_batch_reveal_at_the_end_of_the_items_and_for_rankings(store):
    labeler = PairwiseLabeler(ITEMS[:2], store, judge_score=judge_score, reveal="batch", reveal_every=10)
    labeler.buttons["A"].click()
    labeler.buttons["A"].click()  # the last item: the short batch is revealed
    assert "you agree on 2 of 2" in labeler.message_html.value

    ranker = RankLabeler(RANK_ITEMS, PreferenceStore(store.path.with_name("ranks.jsonl")),
                         judge_score=judge_score, reveal="batch", reveal_every=2)
    ranker.submit([4, 1, 2, 3])  # 5 of 6 pairs agree (see the test of rank agreement)
    assert "1 of 2" in ranker.message_html.value and "order" not in ranker.message_html.value
    ranker.submit([2, 1])  # disagreement
    message = ranker.message_html.value
    assert message.count("<tr>") == 1 + 2 and "B &gt; C &gt; D &gt; A" in message
    assert "you agree on 5 of 7 comparable pairs" in message and "71%" in ranker.agreement_label.value


@pytest.mark.parametrize("reveal, reveal_every", [("sometimes", 5), ("batch", 0), ("batch", 2.5), ("batch", True)])
def test_bad_reveal_settings_are_refused(store, reveal, reveal_every):
    with pytest.raises(ValueError, match="reveal"):
        PairwiseLabeler(ITEMS, store, judge_score=judge_score, reveal=reveal, reveal_every=reveal_every)


def test_without_a_judge_batch_mode_has_nothing_to_reveal(store):
    labeler = PairwiseLabeler(ITEMS, store, reveal="batch")
    assert "reveal" not in labeler.buttons
    labeler.buttons["A"].click()
    assert labeler.message_html.value.endswith("Saved.</div>")
