"""The pass's plan and its application to a block, without I/O (app/memory/extraction.py)."""

from __future__ import annotations

import json

import pytest

from app.memory.extraction import (
    MAX_FACT_CHARS,
    Change,
    InvalidOperations,
    Planned,
    apply,
    block_facts,
    parse_answer,
    plan,
)
from app.providers.builtin.local_model import llama_response_format


def _ops(*ops: tuple[str, int, str]) -> str:
    return json.dumps({"operations": [{"op": o, "line": n, "fact": f} for o, n, f in ops]})


def test_the_default_text_is_no_fact_and_blank_lines_are_dropped() -> None:
    assert block_facts("Nothing is known yet.", "Nothing is known yet.") == []
    assert block_facts("A.\n\n  B.  \n", "x") == ["A.", "B."]


def test_a_fenced_answer_parses_and_anything_else_is_invalid() -> None:
    assert [o.op for o in parse_answer("```json\n" + _ops(("add", 0, "A.")) + "\n```")] == ["add"]
    for bad in ("", "[]", '{"operations": [{"op": "add"', '{"operations": [{"op": "x"}]}'):
        with pytest.raises(InvalidOperations):
            parse_answer(bad)


def test_line_numbers_become_texts_and_bad_ones_are_dropped() -> None:
    facts = ["They live in Lisbon.", "They have a dog."]
    ops = parse_answer(
        _ops(
            ("update", 1, "They live in\nPorto."),
            ("delete", 0, ""),
            ("update", 3, "nope"),
            ("update", 2, ""),
            ("add", 0, "x" * (MAX_FACT_CHARS + 1)),
            ("add", 0, "   "),
        )
    )
    said = "We moved from Lisbon to Porto; the dog went to my mother. " + "x" * 300
    assert plan(ops, facts, said) == [
        Planned("update", "They live in Lisbon.", "They live in Porto."),
        Planned("delete", "They have a dog.", None),
        Planned("archive", None, "x" * (MAX_FACT_CHARS + 1)),
    ]


def test_only_facts_about_what_the_user_said_are_planned() -> None:
    facts = ["Their name is Dana.", "They play the cello on Thursdays."]
    ops = parse_answer(
        _ops(
            ("add", 0, "They have a dog named Rex."),  # invented
            ("add", 0, "Dana Okafor"),  # an answer to the question, not a fact told
            ("delete", 1, ""),  # the user did not talk about their name
            ("update", 2, "They play the cello on Tuesdays."),  # restates the old fact
            ("add", 0, "They love octopuses."),
        )
    )
    said = "Actually, my cello group moved to Tuesdays. Who am I, again? I love octopuses."
    assert plan(ops, facts, said) == [
        Planned("update", "They play the cello on Thursdays.", "They play the cello on Tuesdays."),
        Planned("add", None, "They love octopuses."),
    ]


def test_a_correction_that_names_neither_the_old_value_nor_its_words_still_updates() -> None:
    facts = ["Their name is Dana.", "They live in Lisbon."]
    ops = parse_answer(
        _ops(
            ("update", 2, "They live in Porto."),  # restates line 2 with the new city
            ("update", 1, "Porto."),  # nothing in common with line 1: dropped
            ("delete", 1, ""),  # the user said nothing about their name
        )
    )
    said = "Big news: we moved to Porto last week."
    assert plan(ops, facts, said) == [
        Planned("update", "They live in Lisbon.", "They live in Porto."),
    ]


def test_apply_skips_facts_that_changed_and_never_duplicates() -> None:
    planned = [
        Planned("update", "They live in Lisbon.", "They live in Porto."),
        Planned("add", None, "they have a DOG"),
        Planned("delete", "Gone meanwhile.", None),
    ]
    applied = apply(["They have a dog.", "They live in Lisbon."], planned, limit=1000)
    assert applied.facts == ["They have a dog.", "They live in Porto."]
    assert applied.changes == [Change("update", "They live in Lisbon.", "They live in Porto.")]


def test_a_repeated_archive_is_stored_once() -> None:
    story = Planned("archive", None, "A long story.")
    applied = apply([], [story, Planned("archive", None, "a long story"), story], limit=100)
    assert applied.changes == [Change("archive", None, "A long story.")]


def test_an_update_to_an_existing_fact_merges_the_two_lines() -> None:
    applied = apply(["A is 1.", "A is 2."], [Planned("update", "A is 1.", "A is 2.")], limit=100)
    assert applied.facts == ["A is 2."]


def test_a_full_block_moves_its_oldest_facts_out() -> None:
    applied = apply(["one one", "two two"], [Planned("add", None, "three three")], limit=20)
    assert applied.facts == ["two two", "three three"]
    assert applied.changes[-1] == Change("condense", "one one", None)


def test_the_built_in_model_gets_the_schema_as_llama_cpp_takes_it() -> None:
    schema = {"type": "object"}
    wrapped = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    assert llama_response_format(wrapped) == {"type": "json_object", "schema": schema}
    assert llama_response_format({"type": "json_object"}) == {"type": "json_object"}
    assert llama_response_format({"type": "text"}) == {"type": "text"}
