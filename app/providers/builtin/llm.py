"""The model client behind the built-in agent and the OpenAI-compatible LLM route.

Two implementations of one small protocol, both speaking OpenAI chat-completions dicts:
- `OpenAIChatClient`: any OpenAI-compatible upstream (OpenAI, a LiteLLM proxy with the user's
  virtual key, llama.cpp's server, vLLM...) through the `openai` SDK;
- `LocalChatClient`: the built-in SmolLM2 model run in-process by llama.cpp (`local_model.py`),
  used when no base URL is configured.

Streams always end with a chunk that carries `usage`; when the upstream did not send one, the
client counts locally and marks it `usage["estimated"] = True`, so billing can say so.

Errors: operational failures (connect, timeout, 5xx, 429, a stream cut off, a stream that ends
without a `finish_reason`) raise `LLMUnavailable` (retryable); other 4xx raise
`LLMRequestRejected`; an upstream budget refusal (LiteLLM answers 400/429 with
`error.type == "budget_exceeded"`) raises `BudgetExceeded`.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, Protocol

import httpx
import httpx2  # the HTTP library under openai 3.x; its errors surface mid-stream
import openai
from openai.resources.chat.completions import AsyncCompletions

from app.config import Settings
from app.errors import AppError, BudgetExceeded, UpstreamError, UpstreamUnavailable
from app.platform.http_transport import sdk_transport
from app.platform.metrics import Metrics
from app.providers.billing import LLMRoute, estimate_tokens
from app.providers.builtin.openai_chunks import dump_chunk
from app.providers.instrumented import UpstreamCalls


class LLMUnavailable(UpstreamUnavailable):
    """The model could not answer now (down, timed out, overloaded): try again later."""

    code = "llm_unavailable"
    retryable = True


class LLMReplyCut(LLMUnavailable):
    """The stream ended without a `finish_reason`: the reply is incomplete. Same code as any
    other unavailability (the client's answer is the same: try again)."""


class LLMRequestRejected(UpstreamError):
    """The model's server refused our request (a 4xx other than budget): retrying won't help."""

    code = "llm_request_rejected"
    retryable = False

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class BuiltinModelMissing(LLMUnavailable):
    """llama-cpp-python or the model file is not installed."""

    code = "builtin_model_unavailable"
    retryable = False


def is_retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False))


class ModelPreempted(Exception):
    """A background call (`complete(..., background=True)`) gave way to a user's call on a
    model that generates one answer at a time (the built-in model). Nothing was charged and
    nothing is wrong: the caller tries again later."""


class ChatClient(Protocol):
    model: str
    supports_tools: bool

    def stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """`chat.completion.chunk` dicts; the last one carries `usage`. A generator, so a
        caller that stops reading closes it (`aclose`) and the upstream call with it."""
        ...

    async def complete(self, body: dict[str, Any], *, background: bool = False) -> dict[str, Any]:
        """A `chat.completion` dict with `usage`.

        `background`: a call of the app's own (the memory pass) that must never delay a
        user's. A client in front of one shared generator (the built-in model) lets users'
        calls go first and raises `ModelPreempted` if one arrives while it generates; a client
        of a server that answers calls concurrently ignores it."""
        ...


# --- local token counting (when the upstream does not report usage; `estimate_tokens`) ---


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    else:
        text = ""
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        text += f" {function.get('name', '')} {function.get('arguments', '')}"
    return text


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    # 4 tokens of chat-template framing per message (role markers), 2 to prime the answer.
    total = 2
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            total += 4 + estimate_tokens(message_text(message))
    if body.get("tools"):
        total += estimate_tokens(json.dumps(body["tools"]))
    return total


def prompt_token_bound(body: dict[str, Any]) -> int:
    """At least as many tokens as the prompt can be, for admitting a call on its worst case:
    a byte-level BPE token covers at least one byte, so the UTF-8 size of the messages (and
    tools) as JSON bounds their tokens, role framing included (the JSON keys and quotes around
    each message outnumber its template's few marker tokens). Four times `estimate_prompt_tokens`
    for English; the real count is billed after. Not bounded: what an image part costs."""
    parts = {key: body[key] for key in ("messages", "tools", "functions") if key in body}
    return len(json.dumps(parts, ensure_ascii=False).encode()) + 16


def usage_dict(prompt: int, completion: int, *, estimated: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if estimated:
        usage["estimated"] = True
    return usage


def usage_chunk(completion_id: str, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage,
    }


def _chunk_output_text(chunk: dict[str, Any]) -> str:
    text = ""
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        text += delta.get("content") or ""
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            text += (function.get("name") or "") + (function.get("arguments") or "")
    return text


# --- error mapping ---


def _error_type(body: object) -> str | None:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("type") is not None:
            return str(error["type"])
    return None


def _error_message(body: object, fallback: str) -> str:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
    return fallback


def map_llm_error(exc: Exception) -> AppError:
    """The two kinds (plus budget) from whatever the SDK or httpx raised."""
    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in (400, 429) and _error_type(exc.body) == "budget_exceeded":
            return BudgetExceeded(_error_message(exc.body, "the LLM budget is exhausted"))
        if status == 429 or status >= 500:
            error = LLMUnavailable(f"the model's server answered {status}")
            retry_after = exc.response.headers.get("retry-after")
            if retry_after:
                error.headers = {"Retry-After": retry_after}
            return error
        return LLMRequestRejected(
            f"the model's server refused the request ({status}): "
            f"{_error_message(exc.body, 'no details')}",
            upstream_status=status,
        )
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException | httpx2.TimeoutException):
        return LLMUnavailable("the model timed out")
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError | httpx2.TransportError):
        return LLMUnavailable("the model's server is unreachable or closed the stream")
    if isinstance(exc, openai.APIError):
        # An `error` object inside an SSE stream (e.g. LiteLLM relaying an upstream failure).
        if _error_type(exc.body) == "budget_exceeded":
            return BudgetExceeded(_error_message(exc.body, "the LLM budget is exhausted"))
        return LLMUnavailable(f"the model failed mid-answer: {exc.message[:300]}")
    if isinstance(exc, httpx.HTTPError | httpx2.HTTPError):
        return LLMUnavailable("the model's server failed")
    raise exc


# --- an OpenAI-compatible upstream ---

_CREATE_PARAMS = frozenset(inspect.signature(AsyncCompletions.create).parameters) - {
    "self",
    "stream",
    "stream_options",
    "extra_headers",
    "extra_query",
    "extra_body",
    "timeout",
}


class OpenAIChatClient:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        *,
        supports_tools: bool,
        calls: UpstreamCalls | None = None,
    ) -> None:
        self._client = client
        # The LLM upstream's calls, counted and timed (app/providers/instrumented.py).
        self._calls = calls or UpstreamCalls(Metrics(), "llm")
        # The body is forwarded as given (typed per call by the caller, not by us).
        self._create: Any = client.chat.completions.create
        self.model = model
        self.supports_tools = supports_tools

    def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        # Known parameters go by name; anything else (vendor extensions) rides in extra_body,
        # so the SDK forwards the body unchanged.
        request: dict[str, Any] = {"model": body.get("model") or self.model}
        extra: dict[str, Any] = {}
        for key, value in body.items():
            if key in ("model", "stream", "stream_options"):
                continue
            if key in _CREATE_PARAMS:
                request[key] = value
            else:
                extra[key] = value
        if extra:
            request["extra_body"] = extra
        request.setdefault("messages", [])
        return request

    @staticmethod
    def _body(request: dict[str, Any], stream_options: dict[str, Any]) -> dict[str, Any]:
        """The JSON body `create(**request, stream=True, stream_options=...)` sends: the named
        parameters, then `extra_body` merged over them (the SDK's order)."""
        body = {k: v for k, v in request.items() if k != "extra_body"}
        body["stream"] = True
        body["stream_options"] = stream_options
        body.update(request.get("extra_body") or {})
        return body

    def stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        return self._calls.timed_stream("chat_stream", self._stream(body))

    async def complete(self, body: dict[str, Any], *, background: bool = False) -> dict[str, Any]:
        # `background` changes nothing here: the upstream serves calls side by side.
        return await self._calls.timed_call("chat_complete", self._complete(body))

    async def _stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        request = self._request(body)
        stream_options = dict(body.get("stream_options") or {})
        stream_options["include_usage"] = True
        usage_seen = False
        output: list[str] = []
        # Choice index -> whether it got its `finish_reason`. The SDK swallows `[DONE]` and
        # ends quietly when the body just stops (a connection-delimited body closed mid-reply),
        # so a reply counts as whole only when every choice said why it stopped.
        finished: dict[int, bool] = {}
        completion_id, model = f"chatcmpl-{uuid.uuid4().hex[:12]}", str(request["model"])
        try:
            # The SDK's transport, errors and SSE decoding, but each chunk as the dict it
            # decoded (`cast_to=object`) rather than a model dumped back to a dict: same
            # result (`dump_chunk`), a fraction of the CPU per chunk.
            stream = await self._client.post(
                "/chat/completions",
                body=self._body(request, stream_options),
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            async for raw in stream:
                if not isinstance(raw, dict):
                    raise LLMUnavailable("the model's server sent a chunk that is not an object")
                data = dump_chunk(raw)
                completion_id = data.get("id") or completion_id
                model = data.get("model") or model
                if data.get("usage"):
                    usage_seen = True
                for choice in data.get("choices") or []:
                    index = int(choice.get("index") or 0)
                    finished[index] = finished.get(index, False) or bool(
                        choice.get("finish_reason")
                    )
                output.append(_chunk_output_text(data))
                yield data
        except Exception as exc:  # mapped into our two kinds; programming errors re-raised
            raise map_llm_error(exc) from exc
        if not finished or not all(finished.values()):
            # Retryable, like a dropped connection; the caller bills what was produced (it
            # counts the text it relayed), since the upstream did the work.
            raise LLMReplyCut("the model's reply ended before it finished")
        if not usage_seen:
            prompt = estimate_prompt_tokens(body)
            completion = estimate_tokens("".join(output))
            yield usage_chunk(completion_id, model, usage_dict(prompt, completion, estimated=True))

    async def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        request = self._request(body)
        try:
            answer = await self._create(**request, stream=False)
        except Exception as exc:
            raise map_llm_error(exc) from exc
        data: dict[str, Any] = answer.model_dump(exclude_unset=True, exclude_none=True)
        if not data.get("usage"):
            text = "".join(
                message_text(choice.get("message") or {}) for choice in data.get("choices") or []
            )
            data["usage"] = usage_dict(
                estimate_prompt_tokens(body), estimate_tokens(text), estimated=True
            )
        return data


_MAX_CACHED_CLIENTS = 128
# The openai SDK's default connection limits (openai._constants.DEFAULT_CONNECTION_LIMITS).
_SDK_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
# An evicted client may still be streaming a reply; it is closed once it has been out of the
# cache this long (at a later eviction, or at shutdown).
_RETIRED_GRACE_SECONDS = 600.0


class LLMClients:
    """The app's OpenAI-compatible clients, one per (base URL, key): with LiteLLM every user
    has a key of their own. Owned by the composition root (one per app, so one event loop).
    At most 128 are kept, least recently used first out. An evicted client is closed after a
    grace period (a call may still be streaming through it), in the background since eviction
    happens while a call is set up; every other one at shutdown."""

    def __init__(
        self,
        settings: Settings,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._spawn = spawn
        self._calls = UpstreamCalls(metrics or Metrics(), "llm")
        self._clients: OrderedDict[tuple[str, str | None], openai.AsyncOpenAI] = OrderedDict()
        self._retired: deque[tuple[float, openai.AsyncOpenAI]] = deque()

    def __len__(self) -> int:
        return len(self._clients)

    def for_route(self, route: LLMRoute | None = None) -> ChatClient:
        """The model for one call: the route's upstream and key (the user's LiteLLM key),
        else the configured upstream, else the built-in local model."""
        settings = self._settings
        base_url = (route.base_url if route is not None else None) or settings.llm_base_url
        if not base_url:
            from app.providers.builtin.local_model import LocalChatClient

            return LocalChatClient.for_settings(settings)
        api_key = route.api_key if route is not None and route.api_key else None
        if api_key is None and settings.llm_api_key is not None:
            api_key = settings.llm_api_key.get_secret_value() or None
        supports_tools = (
            True if settings.llm_supports_tools is None else settings.llm_supports_tools
        )
        return OpenAIChatClient(
            self.openai_client(base_url, api_key),
            settings.llm_model,
            supports_tools=supports_tools,
            calls=self._calls,
        )

    def openai_client(self, base_url: str, api_key: str | None) -> openai.AsyncOpenAI:
        """The cached SDK client for this upstream and key (also used for embeddings)."""
        key = (base_url, api_key)
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        settings = self._settings
        timeout = openai.Timeout(
            connect=settings.http_connect_timeout,
            read=settings.http_read_timeout,
            write=30.0,
            pool=10.0,
        )
        client = openai.AsyncOpenAI(
            base_url=base_url,
            # Keyless local servers still need a value for the SDK; it is never a real secret.
            api_key=api_key or "sk-no-key",
            timeout=timeout,
            # A chat call is not retried blindly: the caller decides (and may have billed it).
            max_retries=0,
            # The SDK's own default client (its limits, redirects, proxies from the
            # environment), its connections on the asyncio backend (app/platform/http_transport).
            http_client=openai.DefaultAsyncHttpxClient(
                timeout=timeout, transport=sdk_transport(_SDK_LIMITS)
            ),
        )
        self._clients[key] = client
        if len(self._clients) > _MAX_CACHED_CLIENTS:
            now = time.monotonic()
            while len(self._clients) > _MAX_CACHED_CLIENTS:
                _, evicted = self._clients.popitem(last=False)
                self._retired.append((now, evicted))
            while self._retired and now - self._retired[0][0] > _RETIRED_GRACE_SECONDS:
                self._spawn(self._retired.popleft()[1].close())
        return client

    async def aclose(self) -> None:
        clients = list(self._clients.values()) + [c for _, c in self._retired]
        self._clients.clear()
        self._retired.clear()
        for client in clients:
            await client.close()
