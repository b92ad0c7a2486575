"""``ingest ask`` / ``ingest summarize`` print a reasoning model's thinking to stderr, never into the answer.

Regression: both commands dropped ``Reasoning`` events, so a GLM-Z1-style model sat silent for its whole
thinking (minutes on a CPU) and the user never saw why; the answer on stdout must stay the answer alone
(``ingest summarize novel.txt > summary.txt``).
"""

from __future__ import annotations

import io
from typing import Any

from chains.events import Answer, Progress, Reasoning, Source, Sources, Summary, Token
from ingest.cmd_ask import print_answer
from ingest.cmd_summarize import print_events
from ingest.thinking import HEADER

SOURCE = Source(text="刘备曰", source="sanguo.txt", start=0, end=3)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def answer_events() -> list[Any]:
    return [Sources((SOURCE,), "问"), Reasoning("先想"), Reasoning("一想。"), Token("刘备"), Token("曰[1]"),
            Answer("刘备曰[1]", (SOURCE,), "问")]


def test_ask_prints_the_thinking_to_stderr_and_the_answer_alone_to_stdout() -> None:
    out, err = io.StringIO(), io.StringIO()
    answer = print_answer(answer_events(), out=out, err=err, quiet=False)
    assert answer.text == "刘备曰[1]"
    assert out.getvalue() == "刘备曰[1]\n[1] sanguo.txt · 0–3\n"
    assert err.getvalue() == f"{HEADER}\n先想一想。\n"


def test_hide_thinking_and_a_model_that_does_not_think() -> None:
    out, err = io.StringIO(), io.StringIO()
    print_answer(answer_events(), out=out, err=err, quiet=False, hide_thinking=True)
    assert err.getvalue() == "" and out.getvalue().startswith("刘备曰[1]\n")
    err = io.StringIO()
    print_answer([e for e in answer_events() if not isinstance(e, Reasoning)], out=io.StringIO(), err=err, quiet=False)
    assert err.getvalue() == ""


def test_on_a_terminal_the_thinking_is_dimmed_and_reset_before_the_answer() -> None:
    err = Terminal()
    print_answer(answer_events(), out=io.StringIO(), err=err, quiet=True)
    assert err.getvalue() == f"{HEADER}\n\x1b[2m先想一想。\x1b[0m\n"


def test_a_thinking_that_never_ends_is_closed_at_the_end_of_the_stream() -> None:
    err = Terminal()
    print_answer([Reasoning("想到一半"), Answer("", (), "问")], out=io.StringIO(), err=err, quiet=True)
    assert err.getvalue().endswith("想到一半\x1b[0m\n")


def test_summarize_prints_the_final_merges_thinking_to_stderr_after_the_progress_bar() -> None:
    events = [Progress("map", 1, 2), Progress("map", 2, 2), Reasoning("合并前想想。"), Token("刘备"), Token("起兵。"),
              Summary("刘备起兵。", ("a", "b"))]
    out, err = io.StringIO(), io.StringIO()
    assert print_events(events, out=out, err=err, quiet=False) == "刘备起兵。"
    assert out.getvalue() == "刘备起兵。\n"
    assert err.getvalue().endswith(f"{HEADER}\n合并前想想。\n")
    err = io.StringIO()
    print_events(events, out=io.StringIO(), err=err, quiet=True, hide_thinking=True)
    assert err.getvalue() == ""
