"""The memory benchmark's harness stays working: its oracle, and a tiny run of two modes."""

from __future__ import annotations

import pytest

from bench.memory_llm import Oracle, known_facts
from bench.memory_scenario import QUESTIONS, SESSIONS, latest_statements
from bench.run_memory_bench import parse_args, render, run_mode


def test_the_scenario_asks_about_every_fact_it_plants() -> None:
    assert {q.key for q in QUESTIONS} == set(latest_statements())
    assert len(QUESTIONS) >= 20


def test_the_oracle_updates_the_line_it_wrote_before() -> None:
    oracle = Oracle()
    first = "Known facts:\n(none yet)\n\nLatest exchange:\nUser: {}\nAssistant: Noted."
    hello = SESSIONS[0][0].message  # name and city
    assert [op["op"] for op in oracle.operations(first.format(hello))] == ["add", "add"]
    moved = "Big news: we moved from Lisbon to Porto last week!"
    prompt = (
        "Known facts:\n1. Their name is Dana Okafor.\n2. They live in Lisbon.\n\n"
        f"Latest exchange:\nUser: {moved}\nAssistant: Noted."
    )
    assert known_facts(prompt) == ["Their name is Dana Okafor.", "They live in Lisbon."]
    (op,) = oracle.operations(prompt)
    assert (op["op"], op["line"]) == ("update", 2)
    assert "Porto" in op["fact"]


async def test_a_tiny_run_puts_the_facts_in_the_prompt_only_with_the_pass(
    database_url: str,
) -> None:
    args = parse_args(["--smoke", "--answerer", "none", "--context-tokens", "512"])
    window = await run_mode(
        "window", database_url, args, extractor=("oracle", None), answerer=("scripted", None)
    )
    with_pass = await run_mode(
        "pass", database_url, args, extractor=("oracle", None), answerer=("scripted", None)
    )
    assert with_pass.share() == pytest.approx(1.0)
    assert window.share() is not None and window.share() < 1.0
    assert with_pass.pass_status == {"completed": len(with_pass.turn_seconds)}
    assert with_pass.tokens["pass"] > 0
    table = render([window, with_pass])
    assert "window" in table and "oracle" in table
