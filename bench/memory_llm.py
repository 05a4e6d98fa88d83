"""The memory benchmark's model: an OpenAI-compatible server on loopback that records every
request the app sends, and answers each kind of call as the run asks.

Three kinds of call reach it (the app is configured with LLM_BASE_URL = this server):
- the memory pass's extraction (the one with a `response_format`): answered by the ORACLE
  (below) or forwarded to a real model;
- the recall summarizer (the built-in agent's, when messages leave the window): a fixed text,
  so no run is helped or hurt by how well a model summarizes;
- chat replies: "Noted." while facts are planted (the reply to a planting says nothing
  about memory, and a scripted one keeps runs with a slow local model short); a question's
  reply is a real model's when the run has one (metric b), else a fixed text.

The oracle extractor answers a pass from the scenario's annotations of the message it reads:
each statement becomes `add`, or `update` of the line holding the fact it replaces (found by
the text it told the app before; `add` if that line is gone, condensed into archival), or
`archive` for a long one. So metric (a) with the oracle measures the memory system (storage,
update, condensation, recall into the prompt) given correct extraction, not the extraction.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.providers.billing import estimate_tokens
from app.providers.builtin.llm import estimate_prompt_tokens
from bench.memory_scenario import SESSIONS, Statement, Turn

SUMMARY_TEXT = "(The earlier conversation covered several topics.)"
PLANTING_REPLY = "Noted."
UNANSWERED = "I am not sure."
SUMMARY_MARKER = "You maintain the memory of an assistant."

# A real model behind some calls: takes an OpenAI chat body, returns (text, usage dict).
Forward = Callable[[dict[str, Any]], Awaitable[tuple[str, dict[str, Any]]]]


@dataclass
class Recorded:
    kind: str  # "pass", "summary", "chat"
    body: dict[str, Any]
    answer: str
    usage: dict[str, Any]
    seconds: float


def _turns_by_message() -> dict[str, Turn]:
    return {turn.message: turn for session in SESSIONS for turn in session}


_FACT_LINE = re.compile(r"^(\d+)\. (.*)$")


def known_facts(prompt: str) -> list[str]:
    """The numbered facts the pass showed the model."""
    head, _, _ = prompt.partition("\n\nLatest exchange:")
    _, _, listing = head.partition("Known facts:\n")
    facts = []
    for line in listing.splitlines():
        match = _FACT_LINE.match(line)
        if match:
            facts.append(match.group(2))
    return facts


@dataclass
class Oracle:
    """Correct operations for the scenario's messages, from their annotations."""

    turns: dict[str, Turn] = field(default_factory=_turns_by_message)
    told: dict[str, str] = field(default_factory=dict)  # fact key -> the line text it wrote

    def operations(self, prompt: str) -> list[dict[str, Any]]:
        facts = known_facts(prompt)
        ops: list[dict[str, Any]] = []
        for message in re.findall(r"^User: (.*)$", prompt, flags=re.MULTILINE):
            turn = self.turns.get(message.strip())
            for statement in turn.statements if turn is not None else ():
                ops.append(self._op(statement, facts))
        return ops

    def _op(self, statement: Statement, facts: list[str]) -> dict[str, Any]:
        if statement.long:
            return {"op": "archive", "line": 0, "fact": statement.text}
        previous = self.told.get(statement.key)
        self.told[statement.key] = statement.text
        if statement.replaces and previous in facts:
            return {"op": "update", "line": facts.index(previous) + 1, "fact": statement.text}
        return {"op": "add", "line": 0, "fact": statement.text}


class MemoryBenchLLM:
    def __init__(
        self,
        *,
        extractor: Forward | None = None,
        answerer: Forward | None = None,
    ) -> None:
        self.oracle = Oracle()
        self.extractor = extractor  # None: the oracle
        self.answerer = answerer  # None: a fixed reply to questions
        self.questions: set[str] = set()
        self.recorded: list[Recorded] = []
        self._lock = threading.Lock()
        self.base_url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def calls(self, kind: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.recorded if r.kind == kind]

    async def _answer(self, body: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
        """(kind, text, usage or None to estimate)."""
        messages = body.get("messages") or []
        if "response_format" in body:
            if self.extractor is not None:
                text, usage = await self.extractor(body)
                return "pass", text, usage
            prompt = str(messages[-1].get("content") or "")
            ops = self.oracle.operations(prompt)
            return "pass", json.dumps({"operations": ops}), None
        system = str(messages[0].get("content") or "") if messages else ""
        if system.startswith(SUMMARY_MARKER):
            return "summary", SUMMARY_TEXT, None
        last = str(messages[-1].get("content") or "") if messages else ""
        if last in self.questions:
            if self.answerer is not None:
                text, usage = await self.answerer(body)
                return "chat", text, usage
            return "chat", UNANSWERED, None
        return "chat", PLANTING_REPLY, None

    async def _completions(self, request: Request) -> Response:
        body = json.loads(await request.body())
        started = time.monotonic()
        kind, text, usage = await self._answer(body)
        if usage is None:
            prompt = estimate_prompt_tokens(body)
            completion = estimate_tokens(text)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        with self._lock:
            self.recorded.append(Recorded(kind, body, text, usage, time.monotonic() - started))
        model = str(body.get("model") or "bench-model")
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(data)}\n\n".encode()

        async def stream() -> Any:
            yield chunk({"role": "assistant", "content": text})
            yield chunk({}, "stop")
            final = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(final)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])])
        config = uvicorn.Config(
            app, log_level="critical", access_log=False, lifespan="off", loop="asyncio"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="memory-bench-llm", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the benchmark's model server did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)


def builtin_forward(max_tokens: int | None = None) -> Forward:
    """Calls answered by the built-in SmolLM2 (llama.cpp in this process), with the body the
    app built (`max_tokens` capped when given: a question needs a few words, and the local
    model is slow)."""
    from app.config import Settings
    from app.providers.builtin.local_model import LocalChatClient

    client = LocalChatClient.for_settings(Settings(_env_file=None, llm_context_tokens=2048))

    async def forward(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        request = dict(body, stream=False)
        if max_tokens is not None:
            request["max_tokens"] = min(int(request.get("max_tokens") or max_tokens), max_tokens)
        answer = await client.complete(request)
        text = str(((answer.get("choices") or [{}])[0].get("message") or {}).get("content") or "")
        return text, dict(answer.get("usage") or {})

    return forward


def upstream_forward(base_url: str, api_key: str | None, model: str, max_tokens: int) -> Forward:
    """Calls answered by an OpenAI-compatible model (the operator's LLM_BASE_URL)."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "sk-no-key", max_retries=2)

    async def forward(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        request: dict[str, Any] = {
            "model": model,
            "messages": body["messages"],
            "max_tokens": min(int(body.get("max_tokens") or max_tokens), max_tokens),
        }
        if "response_format" in body:
            request["response_format"] = body["response_format"]
        answer = await client.chat.completions.create(**request)
        text = answer.choices[0].message.content or ""
        usage = answer.usage.model_dump() if answer.usage else {}
        return text, usage

    return forward


__all__ = ["MemoryBenchLLM", "Oracle", "builtin_forward", "known_facts", "upstream_forward"]
