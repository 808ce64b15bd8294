"""Labelling widgets: in lesson 03 the learner is the human who gives RLHF its preferences.

`PairwiseLabeler` asks "which answer is better, A or B?"; `RankLabeler` asks for an order of K
answers, which yields C(K, 2) pairs for the price of one reading. Every label goes straight into a
`PreferenceStore` (durably, before the widget shows the next item), and the reward model of
lesson 04 is trained on exactly those pairs.

Given the simulated human's score (`judge_score`), a widget can reveal its verdict: after each
label (`reveal=True` or "each"), after every batch of `reveal_every` labels (`reveal="batch"`, so
the learner judges a whole batch on their own before seeing a verdict, instead of being anchored
by the last one), or never (`reveal=False` or "never"; agreement is still measured).

Only controls that exist in both ipywidgets 7.7.1 (Colab) and 8.x are used. Everything the
buttons do is also a plain method (`choose`, `submit`, `skip`, `undo`, `reveal_now`), so the
widgets can be driven, and tested, from Python without a browser.
"""

from __future__ import annotations

import html
import string
from collections.abc import Callable, Iterable, Sequence

import ipywidgets as widgets

from rlhf_lab.preferences import PreferenceRecord, PreferenceStore, item_key, ranking_to_pairs

JudgeScore = Callable[[str, str], float]  # (prompt, answer) -> score, higher is better
REVEAL_MODES = ("each", "batch", "never")
PROMPT_CHARS = 70  # a prompt is cut to this many characters in the table of a batch's verdicts


def judge_agreement(records: Iterable[PreferenceRecord], judge_score: JudgeScore) -> float | None:
    """Share of labelled pairs whose order the judge agrees with.

        agreement = #{pairs: score(chosen) > score(rejected)} / #{pairs: score(chosen) != score(rejected)}

    Ties (labelled or scored equal) say nothing about order, so they are left out; None when
    no pair is left to compare.
    """
    agreed = compared = 0
    for record in records:
        if record.tie:
            continue
        chosen_score = judge_score(record.prompt, record.chosen)
        rejected_score = judge_score(record.prompt, record.rejected)
        if chosen_score != rejected_score:
            compared += 1
            agreed += chosen_score > rejected_score
    return agreed / compared if compared else None


def reveal_mode(reveal: bool | str) -> str:
    """"each", "batch" or "never" from the `reveal` argument (True is "each", False is "never")."""
    if reveal is True or reveal is False:
        return "each" if reveal else "never"
    if reveal in REVEAL_MODES:
        return reveal
    raise ValueError(f"reveal must be True, False or one of {REVEAL_MODES}, got {reveal!r}")


def _cached(judge_score: JudgeScore | None) -> JudgeScore | None:
    """Memoise the judge: agreement is recomputed after every click over all labels."""
    if judge_score is None:
        return None
    scores: dict[tuple[str, str], float] = {}

    def cached_judge_score(prompt: str, answer: str) -> float:
        if (prompt, answer) not in scores:
            scores[(prompt, answer)] = float(judge_score(prompt, answer))
        return scores[(prompt, answer)]

    return cached_judge_score


def _text_html(text: str, title: str = "") -> str:
    """Model text shown verbatim: escaped (a sample may contain '<'), line breaks kept."""
    heading = f"<b>{html.escape(title)}</b><br>" if title else ""
    return (
        '<div style="white-space: pre-wrap; border: 1px solid #bbb; border-radius: 4px; '
        f'padding: 6px; margin: 2px;">{heading}{html.escape(text)}</div>'
    )


def _message_html(message: str, is_error: bool = False) -> str:
    style = ' style="color: #b00020;"' if is_error else ""  # else inherit: readable in dark themes too
    return f"<div{style}>{html.escape(message)}</div>"


def _table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A small HTML table of plain-text cells (escaped)."""
    def row_html(cells, tag):
        return "<tr>" + "".join(f'<{tag} style="text-align: left; padding: 1px 8px;">{html.escape(str(cell))}</{tag}>'
                                for cell in cells) + "</tr>"
    return "<table>" + row_html(header, "th") + "".join(row_html(row, "td") for row in rows) + "</table>"


def _short(text: str, limit: int = PROMPT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _agreement_message(rate: float | None) -> str:
    if rate is None:
        return "Agreement with the simulated human: - (no comparable labels yet)"
    return f"Agreement with the simulated human: {rate:.0%}"


def _button(description: str, css_class: str, on_click: Callable[[], object], style: str = "") -> widgets.Button:
    """A button with a stable description and CSS class (browser tests find it by either)."""
    button = widgets.Button(description=description, button_style=style)
    button.add_class(css_class)
    button.on_click(lambda _button: on_click())
    return button


def _progress_widgets(css_class: str) -> tuple[widgets.IntProgress, widgets.Label]:
    progress = widgets.IntProgress(min=0, max=1, value=0)
    progress_label = widgets.Label()
    progress_label.add_class(css_class)
    return progress, progress_label


def _set_progress(progress: widgets.IntProgress, label: widgets.Label, n_labelled: int, target: int) -> None:
    progress.max = max(target, 1)
    progress.value = min(n_labelled, progress.max)
    label.value = f"{n_labelled} / {target}"


class _Labeler:
    """What both labelers share: the queue of unlabelled items (resume), the layout, button clicks
    that report errors, the message line, display."""

    def _start(self, items: list, answers_of: Callable, store: PreferenceStore, annotator: str,
               target: int | None, judge_score: JudgeScore | None, reveal: bool | str, reveal_every: int,
               source: str) -> None:
        """Keep the settings; queue the items this annotator has not labelled yet (resume)."""
        self.items, self.store, self.annotator, self.source = items, store, annotator, source
        self.target = len(items) if target is None else int(target)
        self.judge_score = _cached(judge_score)
        self.reveal = reveal_mode(reveal)
        if isinstance(reveal_every, bool) or not isinstance(reveal_every, int) or reveal_every < 1:
            raise ValueError(f"reveal_every must be a whole number >= 1, got {reveal_every!r}")
        self.reveal_every = reveal_every
        # (item index, the learner's verdict) of the labels whose judge verdict is not shown yet ("batch").
        self._unrevealed: list[tuple[int, object]] = []
        self._details = ""  # HTML under the message: the table of a revealed batch
        self._item_keys = {item_key(item[0], answers_of(item)) for item in items}
        already_labelled = store.labelled_keys(annotator)
        self._queue = [index for index, item in enumerate(items)
                       if item_key(item[0], answers_of(item)) not in already_labelled]
        self._history: list[tuple[int, list[str]]] = []  # (item index, ids written), for undo
        self._message = ""

    def _lay_out(self, answers: widgets.Widget, css_class: str) -> None:
        """The layout both labelers share: progress, prompt, answers, buttons, message, agreement rate."""
        if self._batched:
            self.buttons["reveal"] = _button("Show verdicts now", "rlhf-reveal", lambda: self._click(self.reveal_now))
        self.message_html = widgets.HTML()
        self.message_html.add_class("rlhf-message")
        self.agreement_label = widgets.Label()
        self.widget = widgets.VBox([
            widgets.HBox([self.progress, self.progress_label]),
            self.prompt_html,
            answers,
            widgets.HBox(list(self.buttons.values())),
            self.message_html,
            self.agreement_label,
        ])
        self.widget.add_class(css_class)

    def _click(self, action: Callable[..., object], *args: object) -> None:
        """Run a button's action; show errors in the widget (a callback's traceback is hidden)."""
        try:
            action(*args)
        except Exception as error:
            self.message_html.value = _message_html(f"Error: {error}", is_error=True)
            raise

    @property
    def _batched(self) -> bool:
        return self.reveal == "batch" and self.judge_score is not None

    def _show_message(self) -> None:
        """The last action's message and, once every label has been revealed, the running agreement rate."""
        self.message_html.value = _message_html(self._message) + self._details
        show_agreement = self.judge_score is not None and (
            self.reveal == "each" or (self.reveal == "batch" and not self._unrevealed))
        self.agreement_label.value = _agreement_message(self.agreement_rate) if show_agreement else ""
        if "reveal" in self.buttons:
            self.buttons["reveal"].disabled = not self._unrevealed

    def _after_label(self, index: int, verdict: object, message: str) -> None:
        """The message after a label: `message` now ("each"/"never"), or wait for the batch ("batch")."""
        self._details = ""
        if not self._batched:
            self._message = message
            return
        self._unrevealed.append((index, verdict))
        if len(self._unrevealed) >= self.reveal_every or self.done:
            self._reveal_batch()
        else:
            self._message = (f"Saved. {len(self._unrevealed)} of {self.reveal_every} labels in this batch; "
                             "the simulated human's verdicts come after the batch.")

    def reveal_now(self) -> bool:
        """Show the simulated human's verdicts on the labels given since the last reveal ("batch" mode)."""
        if not self._unrevealed:
            self._message, self._details = "No labels waiting for a verdict.", ""
            self._redraw()
            return False
        self._reveal_batch()
        self._redraw()
        return True

    def _reveal_batch(self) -> None:
        """A table of the simulated human's verdicts on the unrevealed labels; they count as revealed."""
        header, rows, agreed, compared = self._batch_table(self._unrevealed)
        self._message = (f"Saved. The simulated human's verdicts on your last {len(rows)} label(s): "
                         f"you agree on {agreed} of {compared} comparable pairs.")
        self._details = _table_html(header, rows)
        self._unrevealed = []

    def _batch_table(self, entries: list[tuple[int, object]]) -> tuple[list[str], list[list[str]], int, int]:
        """(header, one row per entry, pairs agreed, pairs comparable): each labeler builds its own."""
        raise NotImplementedError

    def undo(self) -> bool:
        """Take back the last action of this session: its labels (a ranking's pairs all at once, with
        one tombstone line) leave the store, and the item comes back."""
        if not self._history:
            self._message = "Nothing to undo in this session."
            self._redraw()
            return False
        index, written_ids = self._history.pop()
        self.store.undo(written_ids)
        self._queue.insert(0, index)
        if self._unrevealed and self._unrevealed[-1][0] == index:  # a label not revealed yet leaves the batch
            self._unrevealed.pop()
        self._message, self._details = "Undone: this item is back.", ""
        self._redraw()
        return True

    def _redraw(self) -> None:
        """Show the current item, the progress and the message (each labeler draws its own)."""
        raise NotImplementedError

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class PairwiseLabeler(_Labeler):
    """Show a prompt and two answers; the learner says which is better (or tie, or skip).

    items: (prompt, answer_a, answer_b) triples. Items this annotator already labelled in
    `store` are skipped, so re-running the cell resumes where the learner stopped. `target` is
    the number of labelled items to aim for (default: all). With `judge_score`, the simulated
    human's verdict and a running agreement rate follow each choice (`reveal=True` or "each"),
    or each batch of `reveal_every` choices (`reveal="batch"`, with a "Show verdicts now" button
    for a batch cut short), or never (`reveal=False`). Undo takes back this session's actions,
    most recent first (a skip too); an undone label that was not revealed yet leaves its batch.
    """

    CHOICES = ("A", "B", "tie", "skip")

    def __init__(self, items: Sequence[tuple[str, str, str]], store: PreferenceStore, annotator: str = "learner",
                 target: int | None = None, judge_score: JudgeScore | None = None, reveal: bool | str = True,
                 source: str = "human", reveal_every: int = 5):
        items = [_checked_pair_item(number, item) for number, item in enumerate(items)]
        self._start(items, lambda item: item[1:], store, annotator, target, judge_score, reveal, reveal_every, source)

        self.progress, self.progress_label = _progress_widgets("rlhf-progress")
        self.prompt_html = widgets.HTML()
        self.answer_a_html = widgets.HTML(layout=widgets.Layout(width="50%"))
        self.answer_b_html = widgets.HTML(layout=widgets.Layout(width="50%"))
        self.buttons = {
            "A": _button("A is better", "rlhf-choice-a", lambda: self._click(self.choose, "A"), "success"),
            "B": _button("B is better", "rlhf-choice-b", lambda: self._click(self.choose, "B"), "success"),
            "tie": _button("Tie", "rlhf-choice-tie", lambda: self._click(self.choose, "tie")),
            "skip": _button("Skip", "rlhf-skip", lambda: self._click(self.choose, "skip")),
            "undo": _button("Undo", "rlhf-undo", lambda: self._click(self.undo), "warning"),
        }
        self._lay_out(widgets.HBox([self.answer_a_html, self.answer_b_html]), "rlhf-pairwise-labeler")
        self._redraw()

    # ----- state -----

    @property
    def n_labelled(self) -> int:
        """How many of this widget's items the annotator has labelled (earlier sessions included)."""
        labelled = self.store.labelled_keys(self.annotator)
        return sum(item_key(prompt, (a, b)) in labelled for prompt, a, b in self.items)

    @property
    def done(self) -> bool:
        return not self._queue or self.n_labelled >= self.target

    @property
    def current_item(self) -> tuple[str, str, str] | None:
        return None if self.done else self.items[self._queue[0]]

    @property
    def agreement_rate(self) -> float | None:
        """Agreement with the judge over this annotator's current labels of these items."""
        if self.judge_score is None:
            return None
        return judge_agreement(self._my_records(), self.judge_score)

    def _my_records(self) -> list[PreferenceRecord]:
        return [
            record
            for record in self.store.records
            if record.annotator == self.annotator
            and item_key(record.prompt, (record.chosen, record.rejected)) in self._item_keys
        ]

    # ----- actions -----

    def choose(self, choice: str) -> None:
        """Label the current item: "A", "B", "tie" or "skip" (case does not matter)."""
        choice = {name.lower(): name for name in self.CHOICES}.get(str(choice).lower())
        if choice is None:
            raise ValueError(f"choice must be one of {self.CHOICES}")
        if self.done:
            raise RuntimeError("nothing left to label: all items are done (use undo() to go back)")
        index = self._queue[0]
        prompt, answer_a, answer_b = self.items[index]
        written_ids = []
        if choice != "skip":
            chosen, rejected = (answer_b, answer_a) if choice == "B" else (answer_a, answer_b)
            record = PreferenceRecord(
                prompt, chosen, rejected, source=self.source, annotator=self.annotator, tie=choice == "tie"
            )
            # Written and fsync-ed before the UI moves on: a crash now loses nothing confirmed.
            if self.store.add(record):
                written_ids.append(record.id)
        self._queue.pop(0)
        self._history.append((index, written_ids))
        if choice == "skip":  # no label: nothing to reveal
            self._message, self._details = "Skipped.", ""
        else:
            self._after_label(index, choice, self._verdict(choice, prompt, answer_a, answer_b))
        self._redraw()

    def _judge_choice(self, prompt: str, answer_a: str, answer_b: str) -> tuple[str, float, float]:
        """The simulated human's choice, "A", "B" or "tie", and its two scores."""
        score_a, score_b = self.judge_score(prompt, answer_a), self.judge_score(prompt, answer_b)
        return ("A" if score_a > score_b else "B" if score_b > score_a else "tie"), score_a, score_b

    def _verdict(self, choice: str, prompt: str, answer_a: str, answer_b: str) -> str:
        if self.judge_score is None or self.reveal != "each":
            return "Saved."
        judge_choice, score_a, score_b = self._judge_choice(prompt, answer_a, answer_b)
        if judge_choice == "tie":
            verdict = "The simulated human rates both the same"
        else:
            verdict = f"The simulated human prefers {judge_choice}"
        agreement = "" if "tie" in (choice, judge_choice) else (
            " You agree." if choice == judge_choice else " You disagree."
        )
        return f"Saved. {verdict} (A: {score_a:.2f}, B: {score_b:.2f}).{agreement}"

    def _batch_table(self, entries):
        rows, agreed, compared = [], 0, 0
        for index, choice in entries:
            prompt, answer_a, answer_b = self.items[index]
            judge_choice, score_a, score_b = self._judge_choice(prompt, answer_a, answer_b)
            comparable = "tie" not in (choice, judge_choice)
            compared += comparable
            agreed += comparable and choice == judge_choice
            mark = "yes" if comparable and choice == judge_choice else "no" if comparable else "-"
            rows.append([_short(prompt), choice, f"{judge_choice} (A {score_a:.2f}, B {score_b:.2f})", mark])
        return ["prompt", "you", "simulated human", "agree"], rows, agreed, compared

    # ----- display -----

    def _redraw(self) -> None:
        n_labelled = self.n_labelled
        _set_progress(self.progress, self.progress_label, n_labelled, self.target)
        current = self.current_item
        if current is None:
            self.prompt_html.value = (
                f"<b>Done:</b> {n_labelled} item(s) labelled, saved in {html.escape(str(self.store.path))}."
            )
            self.answer_a_html.value = self.answer_b_html.value = ""
        else:
            prompt, answer_a, answer_b = current
            self.prompt_html.value = _text_html(prompt, "Prompt")
            self.answer_a_html.value = _text_html(answer_a, "Answer A")
            self.answer_b_html.value = _text_html(answer_b, "Answer B")
        for name in ("A", "B", "tie", "skip"):
            self.buttons[name].disabled = current is None
        self.buttons["undo"].disabled = not self._history
        self._show_message()


class RankLabeler(_Labeler):
    """Show a prompt and K answers; the learner gives each a rank (1 = best) and submits.

    items: (prompt, [answer, ...]) with K >= 2 different answers. A submitted ranking is saved
    as its C(K, 2) (better, worse) pairs, each carrying the full `ranking`. Resume, undo and
    the judge's reveal (after each ranking, after each batch of `reveal_every` rankings, or
    never) work as in `PairwiseLabeler`; agreement is the share of pairs whose order the
    judge's scores confirm.
    """

    UNRANKED = 0  # the dropdowns start here, so a ranking is always a deliberate choice

    def __init__(self, items: Sequence[tuple[str, Sequence[str]]], store: PreferenceStore, annotator: str = "learner",
                 judge_score: JudgeScore | None = None, reveal: bool | str = True, target: int | None = None,
                 source: str = "human", reveal_every: int = 3):
        items = [_checked_rank_item(number, item) for number, item in enumerate(items)]
        self._start(items, lambda item: item[1], store, annotator, target, judge_score, reveal, reveal_every, source)
        self.error: str | None = None  # why the last submit was refused, if it was
        self.rank_dropdowns: list[widgets.Dropdown] = []

        self.progress, self.progress_label = _progress_widgets("rlhf-progress")
        self.prompt_html = widgets.HTML()
        self.answers_box = widgets.VBox()
        self.buttons = {
            "submit": _button("Submit ranking", "rlhf-submit-ranking", lambda: self._click(self.submit), "success"),
            "skip": _button("Skip", "rlhf-skip", lambda: self._click(self.skip)),
            "undo": _button("Undo", "rlhf-undo", lambda: self._click(self.undo), "warning"),
        }
        self._lay_out(self.answers_box, "rlhf-rank-labeler")
        self._redraw()

    # ----- state -----

    @property
    def n_labelled(self) -> int:
        labelled = self.store.labelled_keys(self.annotator)
        return sum(item_key(prompt, answers) in labelled for prompt, answers in self.items)

    @property
    def done(self) -> bool:
        return not self._queue or self.n_labelled >= self.target

    @property
    def current_item(self) -> tuple[str, list[str]] | None:
        return None if self.done else self.items[self._queue[0]]

    @property
    def agreement_rate(self) -> float | None:
        """Share of this annotator's ranked pairs (of these items) whose order the judge confirms."""
        if self.judge_score is None:
            return None
        records = [
            record
            for record in self.store.records
            if record.annotator == self.annotator
            and record.ranking is not None
            and item_key(record.prompt, record.ranking) in self._item_keys
        ]
        return judge_agreement(records, self.judge_score)

    # ----- actions -----

    def submit(self, ranks: Sequence[int] | None = None) -> bool:
        """Save the ranking (ranks[i] = rank of answer i, 1 = best; default: the dropdowns).

        Ranks must be a permutation of 1..K; otherwise nothing is written, `self.error` says
        why, and False is returned.
        """
        if self.done:
            raise RuntimeError("nothing left to rank: all items are done (use undo() to go back)")
        index = self._queue[0]
        prompt, answers = self.items[index]
        if ranks is None:
            ranks = [dropdown.value for dropdown in self.rank_dropdowns]
        ranks = list(ranks)
        self.error = _rank_error(ranks, len(answers))
        if self.error is not None:
            self.message_html.value = _message_html(self.error, is_error=True)
            return False
        ranking = [answer for _rank, answer in sorted(zip(ranks, answers))]
        records = ranking_to_pairs(prompt, ranking, source=self.source, annotator=self.annotator)
        # All pairs in one write + fsync, before the UI moves on.
        written = self.store.add_many(records)
        self._queue.pop(0)
        self._history.append((index, [record.id for record, is_new in zip(records, written) if is_new]))
        self._after_label(index, ranking, self._verdict(prompt, answers, ranking))
        self._redraw()
        return True

    def skip(self) -> None:
        if self.done:
            raise RuntimeError("nothing left to skip")
        self._history.append((self._queue.pop(0), []))
        self._message, self._details = "Skipped.", ""
        self._redraw()

    def _judge_order(self, prompt: str, answers: list[str], ranking: list[str]) -> tuple[str, int, int]:
        """The simulated human's order ("B (2.50) > A (1.00)"), and how many of the ranking's pairs it confirms."""
        letter = {answer: string.ascii_uppercase[position] for position, answer in enumerate(answers)}
        scores = {answer: self.judge_score(prompt, answer) for answer in answers}
        judge_order = sorted(answers, key=lambda answer: -scores[answer])
        order_text = " > ".join(f"{letter[answer]} ({scores[answer]:.2f})" for answer in judge_order)
        pairs = [(better, worse) for position, better in enumerate(ranking) for worse in ranking[position + 1 :]]
        comparable = [(better, worse) for better, worse in pairs if scores[better] != scores[worse]]
        agreed = sum(scores[better] > scores[worse] for better, worse in comparable)
        return order_text, agreed, len(comparable)

    def _verdict(self, prompt: str, answers: list[str], ranking: list[str]) -> str:
        if self.judge_score is None or self.reveal != "each":
            return "Saved."
        order_text, agreed, compared = self._judge_order(prompt, answers, ranking)
        return f"Saved. The simulated human's order: {order_text}. You agree on {agreed} of {compared} pairs."

    def _batch_table(self, entries):
        rows, agreed, compared = [], 0, 0
        for index, ranking in entries:
            prompt, answers = self.items[index]
            letter = {answer: string.ascii_uppercase[position] for position, answer in enumerate(answers)}
            order_text, item_agreed, item_compared = self._judge_order(prompt, answers, ranking)
            agreed, compared = agreed + item_agreed, compared + item_compared
            rows.append([_short(prompt), " > ".join(letter[answer] for answer in ranking), order_text,
                         f"{item_agreed} of {item_compared}"])
        return ["prompt", "your order", "simulated human's order (score)", "pairs agreed"], rows, agreed, compared

    # ----- display -----

    def _redraw(self) -> None:
        """Show the current item with fresh, unranked dropdowns."""
        current = self.current_item
        n_labelled = self.n_labelled
        _set_progress(self.progress, self.progress_label, n_labelled, self.target)
        self.error = None
        self.rank_dropdowns = []
        if current is None:
            self.prompt_html.value = (
                f"<b>Done:</b> {n_labelled} ranking(s) saved in {html.escape(str(self.store.path))}."
            )
            self.answers_box.children = []
        else:
            prompt, answers = current
            self.prompt_html.value = _text_html(prompt, "Prompt")
            options = [("-", self.UNRANKED)] + [(str(rank), rank) for rank in range(1, len(answers) + 1)]
            rows = []
            for position, answer in enumerate(answers):
                dropdown = widgets.Dropdown(options=options, value=self.UNRANKED, layout=widgets.Layout(width="70px"))
                dropdown.add_class(f"rlhf-rank-{position}")
                self.rank_dropdowns.append(dropdown)
                answer_html = widgets.HTML(
                    _text_html(answer, f"Answer {string.ascii_uppercase[position]}"),
                    layout=widgets.Layout(width="90%"),
                )
                rows.append(widgets.HBox([dropdown, answer_html]))
            self.answers_box.children = [widgets.Label("Give each answer a rank: 1 = best."), *rows]
        self.buttons["submit"].disabled = current is None
        self.buttons["skip"].disabled = current is None
        self.buttons["undo"].disabled = not self._history
        self._show_message()


def _rank_error(ranks: list, k: int) -> str | None:
    """None if `ranks` is a permutation of 1..k, else a message the learner can act on."""
    if len(ranks) != k:
        return f"Expected {k} ranks, got {len(ranks)}."
    if not all(isinstance(rank, int) and not isinstance(rank, bool) for rank in ranks):
        return f"Ranks must be whole numbers from 1 to {k}; got {ranks}."
    unranked = [string.ascii_uppercase[position] for position, rank in enumerate(ranks) if rank == RankLabeler.UNRANKED]
    if unranked:
        return f"Give every answer a rank; still unranked: {', '.join(unranked)}."
    if sorted(ranks) != list(range(1, k + 1)):
        return f"Each rank from 1 to {k} must be used exactly once; got {ranks}."
    return None


def _checked_pair_item(number: int, item: object) -> tuple[str, str, str]:
    if not (isinstance(item, (tuple, list)) and len(item) == 3 and all(isinstance(text, str) for text in item)):
        raise ValueError(f"item {number}: expected (prompt, answer_a, answer_b) strings, got {item!r:.200}")
    return (item[0], item[1], item[2])


def _checked_rank_item(number: int, item: object) -> tuple[str, list[str]]:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
        raise ValueError(f"item {number}: expected (prompt, [answers]), got {item!r:.200}")
    prompt, answers = item
    if not (isinstance(answers, (tuple, list)) and all(isinstance(answer, str) for answer in answers)):
        raise ValueError(f"item {number}: answers must be a list of strings, got {answers!r:.200}")
    if not 2 <= len(answers) <= len(string.ascii_uppercase) or len(set(answers)) != len(answers):
        raise ValueError(f"item {number}: need 2 to 26 different answers (remove duplicates first), got {len(answers)}")
    return (prompt, list(answers))
