"""The memory pass over HTTP: the built-in agent and billing, the scripted model answering the
chat call and, separately, the pass's constrained call (see conftest.Model)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from app.memory.extraction import OPERATIONS_SCHEMA
from app.providers.billing import TokenUsage
from tests.memory.conftest import Model, SessionFactory, operations
from tests.support.metrics import parse, total, value
from tests.support.scripted_llm import Error, Text


async def test_a_fact_from_the_exchange_lands_in_the_human_block_with_its_turn(
    session: SessionFactory, model: Model, db_pool: asyncpg.Pool
) -> None:
    s = await session()
    model.chat.append(Text("Nice to meet you, Dana!", usage=(40, 6)))
    model.passes.append(
        operations(("add", 0, "Their name is Dana."), ("add", 0, "They live in Lisbon."))
    )
    turn_id, _ = await s.chat("Hi! My name is Dana and I live in Lisbon")
    done = await s.finished_pass(turn_id)

    assert done["status"] == "completed" and done["error"] is None
    assert done["operations"] == 2 and done["exchanges"] == 1
    assert (done["prompt_tokens"], done["completion_tokens"]) == (120, 30)
    assert await s.human() == "Their name is Dana.\nThey live in Lisbon."
    changes = await s.changes()
    assert [(c["op"], c["target"], c["before"], c["after"]) for c in reversed(changes)] == [
        ("add", "human", None, "Their name is Dana."),
        ("add", "human", None, "They live in Lisbon."),
    ]
    assert {c["turn_id"] for c in changes} == {str(turn_id)}
    assert {c["pass_id"] for c in changes} == {done["id"]}

    # What the pass asked: the constrained schema, the exchange, no facts yet.
    (asked,) = model.pass_bodies
    assert asked["response_format"]["type"] == "json_schema"
    assert asked["response_format"]["json_schema"]["schema"] == OPERATIONS_SCHEMA
    prompt = asked["messages"][-1]["content"]
    assert "(none yet)" in prompt
    assert "User: Hi! My name is Dana and I live in Lisbon" in prompt
    assert "Assistant: Nice to meet you, Dana!" in prompt
    assert asked["max_tokens"] == s.app.state.settings.memory_pass_max_tokens

    # Billed like any model call: the budget and usage count the pass, `messages` does not.
    billing = s.app.state.services.billing
    turn_cost = billing.cost_of(TokenUsage("scripted-model", 40, 6, 46))
    pass_cost = billing.cost_of(TokenUsage("scripted-model", 120, 30, 150))
    assert done["cost"] == pytest.approx(pass_cost)
    async with db_pool.acquire() as conn:
        spend = await conn.fetchval("select spend from budgets where user_id = $1", s.user_id)
        day = await conn.fetchrow(
            "select sum(messages) m, sum(prompt_tokens) p from usage_daily where user_id = $1",
            s.user_id,
        )
    assert float(spend) == pytest.approx(turn_cost + pass_cost)
    assert (day["m"], day["p"]) == (1, 160)

    # The next turn's prompt carries the fact (the block is in the system prompt).
    model.chat.append(Text("You live in Lisbon."))
    model.passes.append(operations())
    second, _ = await s.chat("Where do I live?")
    await s.finished_pass(second)
    assert "They live in Lisbon." in model.chat_bodies[-1]["messages"][0]["content"]


async def test_a_correction_replaces_the_old_fact_without_a_duplicate(
    session: SessionFactory, model: Model
) -> None:
    s = await session()
    model.chat.extend([Text("Hello Dana."), Text("Congratulations on the move!")])
    model.passes.append(
        operations(("add", 0, "Their name is Dana."), ("add", 0, "They live in Lisbon."))
    )
    first, _ = await s.chat("I'm Dana, I live in Lisbon.")
    await s.finished_pass(first)
    # The model names the fact by its line; adding the same new fact again changes nothing.
    model.passes.append(
        operations(("update", 2, "They live in Porto."), ("add", 0, "They live in Porto."))
    )
    second, _ = await s.chat("We moved from Lisbon to Porto last week!")
    done = await s.finished_pass(second)

    assert "2. They live in Lisbon." in model.pass_bodies[-1]["messages"][-1]["content"]
    assert await s.human() == "Their name is Dana.\nThey live in Porto."
    assert done["operations"] == 1
    (update,) = await s.changes(turn_id=str(second))
    assert (update["op"], update["before"], update["after"]) == (
        "update",
        "They live in Lisbon.",
        "They live in Porto.",
    )


async def test_a_contradicted_fact_is_removed_and_a_bad_line_number_edits_nothing(
    session: SessionFactory, model: Model
) -> None:
    s = await session()
    model.chat.extend([Text("Noted."), Text("Fish it is, then.")])
    model.passes.append(
        operations(("add", 0, "They are vegetarian."), ("add", 0, "They have a dog."))
    )
    first, _ = await s.chat("I'm vegetarian and I have a dog.")
    await s.finished_pass(first)
    model.passes.append(
        operations(
            ("delete", 1, ""),
            ("update", 7, "They have a cat."),  # no line 7: dropped, never a guess
            ("add", 0, "They eat fish (pescatarian)."),
        )
    )
    second, _ = await s.chat("I'm not vegetarian any more, I eat fish now.")
    await s.finished_pass(second)

    assert await s.human() == "They have a dog.\nThey eat fish (pescatarian)."
    ops = [(c["op"], c["before"], c["after"]) for c in reversed(await s.changes(turn_id=second))]
    assert ops == [
        ("delete", "They are vegetarian.", None),
        ("add", None, "They eat fish (pescatarian)."),
    ]


async def test_a_full_block_is_condensed_into_archival_memory(
    session: SessionFactory, model: Model
) -> None:
    s = await session(core_memory_block_limit=60, llm_supports_tools=False)
    model.chat.extend([Text("Hi."), Text("Cool.")])
    model.passes.append(
        operations(("add", 0, "Their name is Dana Okafor."), ("add", 0, "They live in Lisbon."))
    )
    first, _ = await s.chat("I'm Dana Okafor from Lisbon.")
    await s.finished_pass(first)
    model.passes.append(operations(("add", 0, "They play the cello on Thursdays.")))
    second, _ = await s.chat("I play the cello on Thursdays.")
    done = await s.finished_pass(second)

    human = await s.human()
    assert len(human) <= 60
    assert human == "They live in Lisbon.\nThey play the cello on Thursdays."
    ops = [(c["op"], c["before"], c["after"]) for c in reversed(await s.changes(turn_id=second))]
    assert ops == [
        ("add", None, "They play the cello on Thursdays."),
        ("condense", "Their name is Dana Okafor.", None),
    ]
    condensed = (await s.changes(turn_id=second))[0]
    passage = await s.client.get(
        f"/api/v1/agent/memory/archival/{condensed['passage_id']}", headers=s.headers
    )
    assert passage.status_code == 200
    assert passage.json()["text"] == "Their name is Dana Okafor."
    assert set(passage.json()["tags"]) == {"memory-pass", f"turn:{second}", "condensed"}
    assert done["operations"] == 2
    # Moved, not lost: automatic recall finds it for a question about it.
    model.chat.append(Text("Dana Okafor."))
    model.passes.append(operations())
    third, _ = await s.chat("What is my name, Dana Okafor or something else?")
    await s.finished_pass(third)
    assert "Their name is Dana Okafor." in model.chat_bodies[-1]["messages"][0]["content"]


async def test_a_longer_fact_is_written_to_archival_memory(
    session: SessionFactory, model: Model
) -> None:
    s = await session()
    story = (
        "Favourite holiday memory: a summer in a tiny cabin near Geres, hiking to a waterfall "
        "every morning while Tomas burned the bread every night."
    )
    model.chat.append(Text("What a lovely memory."))
    model.passes.append(operations(("archive", 0, story)))
    turn_id, _ = await s.chat(
        "My favourite holiday memory: the summer in a tiny cabin near Geres, hiking to a "
        "waterfall every morning while Tomas burned the bread every night."
    )
    await s.finished_pass(turn_id)

    listed = await s.client.get(
        "/api/v1/agent/memory/archival", params={"tag": "memory-pass"}, headers=s.headers
    )
    (passage,) = listed.json()["items"]
    assert passage["text"] == story
    assert set(passage["tags"]) == {"memory-pass", f"turn:{turn_id}"}
    (change,) = await s.changes()
    assert (change["op"], change["target"], change["after"], change["passage_id"]) == (
        "archive",
        "archival",
        story,
        passage["id"],
    )
    assert await s.human() == s.app.state.settings.default_human  # the block is untouched


async def test_a_user_over_budget_gets_no_pass_and_the_refusal_is_recorded(
    session: SessionFactory, model: Model
) -> None:
    s = await session(user_default_budget=0.01)
    # The turn itself uses the budget up ($0.05 of $0.01: a turn is admitted on a check).
    model.chat.append(Text("Hi Dana.", usage=(100_000, 5)))
    model.passes.append(operations(("add", 0, "Their name is Dana.")))
    turn_id, _ = await s.chat("I'm Dana.")
    done = await s.finished_pass(turn_id)

    assert (done["status"], done["error"]) == ("refused", "budget_exceeded")
    assert (done["prompt_tokens"], done["cost"]) == (0, 0.0)
    assert model.pass_bodies == []  # no model call was made
    assert await s.human() == s.app.state.settings.default_human
    assert await s.changes() == []


@pytest.mark.parametrize(
    ("answer", "error", "billed"),
    [
        (Text("Sure! Dana lives in Lisbon.", usage=(100, 10)), "invalid_output", True),
        (Text('{"operations": [{"op": "add", "line": 0', usage=(100, 10)), "invalid_output", True),
        (Text('{"operations": [{"op": "forget", "line": 1, "fact": ""}]}'), "invalid_output", True),
        (Error(500), "llm_unavailable", False),
    ],
    ids=["prose", "cut-off-json", "unknown-op", "upstream-500"],
)
async def test_a_failed_pass_leaves_memory_as_it_was(
    session: SessionFactory, model: Model, answer: Any, error: str, billed: bool
) -> None:
    s = await session()
    model.chat.append(Text("Hello Dana."))
    model.passes.append(operations(("add", 0, "Their name is Dana.")))
    first, _ = await s.chat("I'm Dana.")
    await s.finished_pass(first)
    before = await s.human()
    model.chat.append(Text("Lisbon is lovely."))
    model.passes.append(answer)
    second, _ = await s.chat("I live in Lisbon.")
    done = await s.finished_pass(second)

    assert (done["status"], done["error"]) == ("failed", error)
    assert await s.human() == before == "Their name is Dana."
    assert await s.changes(turn_id=str(second)) == []
    assert (done["cost"] > 0) is billed  # a call that answered was paid for


async def test_an_edit_made_during_the_pass_is_never_overwritten(
    session: SessionFactory, model: Model
) -> None:
    """The user rewrites the block while the pass waits for its model: the pass's `If-Match`
    fails, it reads the block again and applies its plan to the user's text; its update of a
    fact the user removed is dropped, its new fact is added below the user's."""
    s = await session()
    model.chat.extend([Text("Hello."), Text("Porto, nice.")])
    model.passes.append(
        operations(("add", 0, "Their name is Dana."), ("add", 0, "They live in Lisbon."))
    )
    first, _ = await s.chat("I'm Dana from Lisbon.")
    await s.finished_pass(first)

    loop = asyncio.get_running_loop()

    async def user_edit() -> None:
        block = await s.client.get("/api/v1/agent/memory/blocks/human", headers=s.headers)
        edited = await s.client.patch(
            "/api/v1/agent/memory/blocks/human",
            json={"value": "Their name is Dana Okafor."},
            headers={**s.headers, "If-Match": block.headers["ETag"]},
        )
        assert edited.status_code == 200, edited.text

    def during_the_pass(_: dict[str, Any]) -> None:
        # In the scripted server's thread: the edit runs on the test's loop, over HTTP.
        asyncio.run_coroutine_threadsafe(user_edit(), loop).result(timeout=10)
        model.on_pass = None

    model.on_pass = during_the_pass
    model.passes.append(
        operations(("update", 2, "They live in Porto."), ("add", 0, "They have a cat."))
    )
    second, _ = await s.chat("We moved from Lisbon to Porto and got a cat.")
    done = await s.finished_pass(second)

    assert await s.human() == "Their name is Dana Okafor.\nThey have a cat."
    assert done["status"] == "completed"
    ops = [(c["op"], c["after"]) for c in await s.changes(turn_id=str(second))]
    assert ops == [("add", "They have a cat.")]


async def test_off_makes_no_pass(session: SessionFactory, model: Model) -> None:
    s = await session(memory_pass="off")
    model.chat.append(Text("Hello Dana."))
    turn_id, _ = await s.chat("I'm Dana.")
    await asyncio.sleep(0.3)
    assert await s.passes() == []
    assert len(model.llm.bodies) == 1  # the chat call only
    assert await s.human() == s.app.state.settings.default_human


async def test_every_n_reads_the_last_n_exchanges_after_every_nth_turn(
    session: SessionFactory, model: Model
) -> None:
    s = await session(memory_pass="every_n", memory_pass_every=2)
    model.chat.extend([Text("Hi Dana."), Text("A beagle!"), Text("Cute.")])
    model.passes.append(
        operations(("add", 0, "Their name is Dana."), ("add", 0, "They have a beagle."))
    )
    first, _ = await s.chat("I'm Dana.")
    await asyncio.sleep(0.3)
    assert await s.passes() == []
    second, _ = await s.chat("I have a beagle.")
    done = await s.finished_pass(second)
    assert done["exchanges"] == 2
    prompt = model.pass_bodies[0]["messages"][-1]["content"]
    assert prompt.index("User: I'm Dana.") < prompt.index("User: I have a beagle.")
    assert await s.human() == "Their name is Dana.\nThey have a beagle."
    third, _ = await s.chat("Just a third message.")
    await asyncio.sleep(0.3)
    assert [p["turn_id"] for p in await s.passes()] == [str(second)]
    assert len(model.pass_bodies) == 1


async def test_the_reply_is_done_before_the_pass_runs(
    session: SessionFactory, model: Model
) -> None:
    s = await session()
    model.chat.append(Text("Hello Dana."))
    model.passes.append(
        Text(json.dumps({"operations": [{"op": "add", "line": 0, "fact": "Dana."}]}), delay=2.0)
    )
    turn_id, elapsed = await s.chat("I'm Dana.")
    # `done` came while the pass still waits for its (slow) model.
    assert elapsed < 1.5
    # Queued after `done` (maybe not even yet), and nothing written so far.
    assert all(p["status"] in ("pending", "running") for p in await s.passes(turn_id))
    assert await s.human() == s.app.state.settings.default_human
    done = await s.finished_pass(turn_id)
    assert done["status"] == "completed"
    assert await s.human() == "Dana."


async def test_a_pass_left_running_by_a_dead_process_is_retried(
    session: SessionFactory, model: Model, db_pool: asyncpg.Pool
) -> None:
    s = await session(memory_pass="off")
    model.chat.append(Text("Hello Dana."))
    turn_id, _ = await s.chat("I'm Dana.")
    async with db_pool.acquire() as conn:
        await conn.execute(
            """
            insert into memory_passes (user_id, turn_id, status, owner, attempts, claimed_at)
            values ($1, $2, 'running', 'dead-instance/boot', 1, now() - interval '1 hour')
            """,
            s.user_id,
            turn_id,
        )
    model.passes.append(operations(("add", 0, "Their name is Dana.")))
    # Another process (pass on) finds it stale, requeues and runs it.
    other = await session()
    done = await s.finished_pass(turn_id)
    assert (done["status"], done["attempts"]) == ("completed", 2)
    assert await s.human() == "Their name is Dana."
    assert other.user_id != s.user_id


async def test_changes_and_passes_page_newest_first(session: SessionFactory, model: Model) -> None:
    s = await session()
    model.chat.append(Text("Hello."))
    model.passes.append(operations(*[("add", 0, f"Fact number {i}.") for i in range(5)]))
    turn_id, _ = await s.chat("Fact number 0 to fact number 4.")
    await s.finished_pass(turn_id)
    first = await s.client.get(
        "/api/v1/agent/memory/changes", params={"limit": 2}, headers=s.headers
    )
    page = first.json()
    assert [c["after"] for c in page["items"]] == ["Fact number 4.", "Fact number 3."]
    rest = await s.client.get(
        "/api/v1/agent/memory/changes",
        params={"limit": 10, "cursor": page["next_cursor"]},
        headers=s.headers,
    )
    assert [c["after"] for c in rest.json()["items"]] == [f"Fact number {i}." for i in (2, 1, 0)]
    assert rest.json()["next_cursor"] is None
    bad = await s.client.get(
        "/api/v1/agent/memory/changes", params={"cursor": "x1"}, headers=s.headers
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_cursor"
    unauthenticated = await s.client.get("/api/v1/agent/memory/changes")
    assert unauthenticated.status_code == 401


async def test_a_disabled_accounts_pass_waits_until_it_is_enabled_again(
    session: SessionFactory, model: Model, db_pool: asyncpg.Pool
) -> None:
    s = await session(memory_pass="off")
    model.chat.append(Text("Hello Dana."))
    turn_id, _ = await s.chat("My name is Dana.")
    async with db_pool.acquire() as conn:
        await conn.execute(
            "insert into memory_passes (user_id, turn_id) values ($1, $2)", s.user_id, turn_id
        )
        # Disabled by an admin, or by a deletion under way.
        await conn.execute("update profiles set disabled_at = now() where id = $1", s.user_id)
    model.passes.append(operations(("add", 0, "Their name is Dana.")))
    await session()  # a process with the pass on, polling every 0.1 s
    await asyncio.sleep(1.0)
    async with db_pool.acquire() as conn:
        status = await conn.fetchval("select status from memory_passes where turn_id = $1", turn_id)
        assert status == "pending"
        assert model.pass_bodies == []  # no model call for a disabled account
        await conn.execute("update profiles set disabled_at = null where id = $1", s.user_id)
    done = await s.finished_pass(turn_id)
    assert done["status"] == "completed"
    assert await s.human() == "Their name is Dana."


async def test_the_claim_loop_ends_on_its_stop_flag_without_a_cancellation(
    session: SessionFactory,
) -> None:
    """`stop` sets a flag and wakes the loop besides cancelling it: on Python 3.11 a
    cancellation arriving together with a wake-up can be lost (`wait_for`), and the app's
    shutdown then waited for the loop forever."""
    s = await session()
    runner = s.app.state.services.memory_passes
    task = runner._loop_task
    assert task is not None and not task.done()
    runner._stopping = True  # what stop() does before it cancels
    runner._wake.set()
    await asyncio.wait_for(asyncio.shield(task), timeout=2)
    assert task.done() and not task.cancelled()


async def test_the_pass_is_counted_in_the_usage_metrics_as_its_own_source(
    session: SessionFactory, model: Model
) -> None:
    token = "memory-pass-metrics-token-0123456789"
    s = await session(metrics_token=token)
    model.chat.append(Text("Hello Dana.", usage=(40, 6)))
    model.passes.append(operations(("add", 0, "Their name is Dana."), usage=(120, 30)))
    turn_id, _ = await s.chat("My name is Dana")
    assert (await s.finished_pass(turn_id))["status"] == "completed"

    scrape = await s.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    m = parse(scrape.text)
    chat = {"model": "scripted-model", "source": "chat"}
    assert value(m, "agentmem_tokens_total", **chat, kind="prompt") == 40
    memory = {"model": "scripted-model", "source": "memory_pass"}
    assert value(m, "agentmem_tokens_total", **memory, kind="prompt") == 120
    assert value(m, "agentmem_tokens_total", **memory, kind="completion") == 30
    cost = s.app.state.services.billing.cost_of(TokenUsage("scripted-model", 120, 30, 150))
    assert value(m, "agentmem_cost_usd_total", **memory) == pytest.approx(cost)
    # Not counted as the LLM route's: no call came through it.
    assert total(m, "agentmem_tokens_total", source="llm_route") == 0
