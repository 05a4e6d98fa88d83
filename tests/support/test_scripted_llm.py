"""The scripted server answers the way OpenAI-compatible servers do (checked with the SDK)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.scripted_llm import Abort, Error, ScriptedLLM, Text, ToolCall


def _client(server: ScriptedLLM) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


async def test_streams_text_then_usage_and_records_the_body(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.push(Text("Hello there friend", usage=(5, 3)))
    stream = await _client(scripted_llm).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there friend"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8
    assert scripted_llm.bodies[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert scripted_llm.requests[0].headers["authorization"] == "Bearer sk-test"


async def test_no_usage_chunk_unless_asked(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.push(Text("a b"))
    stream = await _client(scripted_llm).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    assert chunks and all(c.usage is None for c in chunks)


async def test_streams_a_tool_call_in_pieces(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.push(ToolCall("core_memory_append", {"label": "human", "content": "likes tea"}))
    stream = await _client(scripted_llm).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    name, args, finish = "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                name += (tc.function.name or "") if tc.function else ""
                args += (tc.function.arguments or "") if tc.function else ""
            finish = choice.finish_reason or finish
    assert name == "core_memory_append"
    assert args == '{"label": "human", "content": "likes tea"}'
    assert finish == "tool_calls"


async def test_non_streaming_answer_has_usage(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.push(Text("Paris.", usage=(20, 2)))
    answer = await _client(scripted_llm).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "capital of France?"}]
    )
    assert answer.choices[0].message.content == "Paris."
    assert answer.usage is not None and answer.usage.prompt_tokens == 20


async def test_errors_and_aborts(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.push(Error(503), Abort(["par", "tial"]))
    client = _client(scripted_llm)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="m", messages=[], stream=True)
    stream = await client.chat.completions.create(model="m", messages=[], stream=True)
    got = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        async for chunk in stream:
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(got) == "partial"


async def test_empty_queue_fails_loudly(scripted_llm: ScriptedLLM) -> None:
    with pytest.raises(openai.InternalServerError, match="no response queued"):
        await _client(scripted_llm).chat.completions.create(model="m", messages=[])
