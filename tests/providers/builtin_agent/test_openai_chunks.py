"""`dump_chunk` gives what the SDK's `ChatCompletionChunk` model dumped (the LLM route's chunks
and the built-in agent's), on every shape a chunk takes, without building the model."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest
from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk

from app.providers.builtin.openai_chunks import dump_chunk


def _by_model(data: dict[str, Any]) -> dict[str, Any]:
    model = construct_type(type_=ChatCompletionChunk, value=data)
    dumped: dict[str, Any] = model.model_dump(exclude_unset=True, exclude_none=True, warnings=False)  # type: ignore[attr-defined]
    return dumped


def _head(**extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "system_fingerprint": None,
        **extra,
    }


CASES: list[dict[str, Any]] = [
    _head(
        choices=[
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "hi", "refusal": None},
                "logprobs": None,
                "finish_reason": None,
            }
        ]
    ),
    _head(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    _head(
        choices=[],
        usage={
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "total_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": None, "audio_tokens": 0},
            "completion_tokens_details": None,
        },
    ),
    # Tool calls, split over chunks as OpenAI and llama.cpp send them.
    _head(
        choices=[
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": None},
                        }
                    ]
                },
            }
        ]
    ),
    _head(
        choices=[
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1}'}}]},
            }
        ]
    ),
    # Vendor extensions at every level: None dropped where the model keeps an extra, nested
    # plain dicts kept as they came.
    _head(
        x_vendor={"a": None, "b": [None, {"c": None}]},
        x_none=None,
        choices=[
            {
                "index": 0,
                "extra_choice": None,
                "delta": {"content": None, "reasoning_content": "r", "extra": {"k": None}},
            }
        ],
    ),
    # Logprobs: an integer in a float field comes out a float, as the model dumps it.
    _head(
        choices=[
            {
                "index": 0,
                "delta": {"content": "a"},
                "logprobs": {
                    "content": [
                        {
                            "token": "a",
                            "logprob": -1,
                            "bytes": None,
                            "top_logprobs": [{"token": "a", "logprob": -2, "bytes": [97]}],
                        }
                    ],
                    "refusal": None,
                },
            }
        ]
    ),
    # Odd values: kept as they came, like the model's construction does.
    _head(choices=[{"index": 0, "delta": "not an object"}], usage="n/a"),
    {"choices": None, "weird": [1, None, "x"]},
    # A union of models (moderation): through the model itself.
    _head(
        choices=[],
        moderation={"input": {"type": "error", "code": "c", "message": "m", "extra": None}},
    ),
]


@pytest.mark.parametrize("chunk", CASES, ids=range(len(CASES)))
def test_the_same_dict_as_the_sdk_model(chunk: dict[str, Any]) -> None:
    expected = _by_model(chunk)
    got = dump_chunk(json.loads(json.dumps(chunk)))
    assert got == expected
    # Equal as JSON too: types and not just values (an int is not a float there).
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_random_chunks_of_the_known_shapes() -> None:
    rng = random.Random(17)
    values: list[Any] = [None, 0, 1, -1.5, "x", True, [], {}, [None], {"k": None}]
    keys = ["role", "content", "refusal", "tool_calls", "reasoning_content", "function_call"]
    for _ in range(300):
        delta = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, len(keys)))}
        if rng.random() < 0.5:
            delta["tool_calls"] = [
                {
                    "index": i,
                    "id": rng.choice([None, "c"]),
                    "function": {
                        "name": rng.choice([None, "f"]),
                        "arguments": rng.choice([None, "{}"]),
                    },
                }
                for i in range(rng.randint(0, 2))
            ]
        choice = {
            "index": 0,
            "delta": delta,
            "finish_reason": rng.choice([None, "stop", "length"]),
            "logprobs": rng.choice([None, {"content": None}]),
        }
        chunk = _head(
            choices=[choice],
            usage=rng.choice(
                [None, {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}]
            ),
        )
        for key, value in itertools.islice(
            ((k, rng.choice(values)) for k in ("x1", "x2")), rng.randint(0, 2)
        ):
            chunk[key] = value
        got, expected = dump_chunk(chunk), _by_model(chunk)
        assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True), chunk
