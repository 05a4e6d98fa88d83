"""The model client behind the built-in agent and the OpenAI-compatible LLM route.

Two implementations of one small protocol, both speaking OpenAI chat-completions dicts:
- `OpenAIChatClient`: any OpenAI-compatible upstream (OpenAI, a LiteLLM proxy with the user's
  virtual key, llama.cpp's server, vLLM...) through the `openai` SDK (streamed calls on the
  SDK's own HTTP client, their server-sent events read here: `SSEData`);
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

import asyncio
import inspect
import json
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
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


def _status_error(status: int, body: object, headers: httpx2.Headers) -> AppError:
    """A non-2xx answer. `body`: its JSON (or text, or None), as the SDK kept it."""
    if status in (400, 429) and _error_type(body) == "budget_exceeded":
        return BudgetExceeded(_error_message(body, "the LLM budget is exhausted"))
    if status == 429 or status >= 500:
        error = LLMUnavailable(f"the model's server answered {status}")
        retry_after = headers.get("retry-after")
        if retry_after:
            error.headers = {"Retry-After": retry_after}
        return error
    return LLMRequestRejected(
        f"the model's server refused the request ({status}): {_error_message(body, 'no details')}",
        upstream_status=status,
    )


def _stream_error(error: object, message: str) -> AppError:
    """An `error` object inside an SSE stream (e.g. LiteLLM relaying an upstream failure)."""
    if _error_type(error) == "budget_exceeded":
        return BudgetExceeded(_error_message(error, "the LLM budget is exhausted"))
    return LLMUnavailable(f"the model failed mid-answer: {message[:300]}")


def map_llm_error(exc: Exception) -> AppError:
    """The two kinds (plus budget) from whatever the SDK or httpx raised."""
    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc.status_code, exc.body, exc.response.headers)
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException | httpx2.TimeoutException):
        return LLMUnavailable("the model timed out")
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError | httpx2.TransportError):
        return LLMUnavailable("the model's server is unreachable or closed the stream")
    if isinstance(exc, openai.APIError):
        return _stream_error(exc.body, exc.message)
    if isinstance(exc, httpx.HTTPError | httpx2.HTTPError):
        return LLMUnavailable("the model's server failed")
    raise exc


# --- server-sent events (the streamed answer) ---


class SSEData:
    """The `data` of each event of a server-sent event stream, fed the body as it arrives.

    What the SDK's decoder does (the WHATWG rules: lines end with LF, CRLF or CR; `:` starts a
    comment; one space after the field's colon is dropped; an event's `data` lines join with
    LF; a blank line ends the event; an event the body ends inside is dropped), for the one
    field an OpenAI stream uses: `event`, `id` and `retry` are read past, and an event without
    data is skipped (the SDK handed it on as an empty string, which no JSON parse accepts).
    Bytes, not text: `json.loads` reads UTF-8 bytes itself."""

    __slots__ = ("_data", "_rest")

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []

    def feed(self, piece: bytes) -> list[bytes]:
        text = self._rest + piece if self._rest else piece
        if b"\r" in text:
            # A CR at the very end may be the first half of a CRLF split across reads: it
            # waits for the next piece (or the end), so that CRLF stays one line end.
            hold = text.endswith(b"\r")
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if hold:
                text = text[:-1]
            lines = text.split(b"\n")
            self._rest = lines.pop() + (b"\r" if hold else b"")
        else:
            lines = text.split(b"\n")
            self._rest = lines.pop()
        return self._lines(lines) if lines else []

    def finish(self) -> list[bytes]:
        """Events completed by the body's last bytes (a held CR ends a line)."""
        rest, self._rest = self._rest, b""
        return self._lines([rest[:-1]]) if rest.endswith(b"\r") else []

    def _lines(self, lines: list[bytes]) -> list[bytes]:
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line == b"data":
                data.append(b"")
            # else: a comment, or a field an OpenAI stream does not use
        return events


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


# After `[DONE]`, how long the rest of the body (on HTTP/1.1 usually just the chunked body's
# terminator) is waited for so that its connection goes back to the pool; the SDK's bound
# (openai._streaming_cleanup).
_DRAIN_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class ChatStreamTarget:
    """Where a streamed chat call goes and what it carries, computed once per SDK client: its
    own httpx2 client (transport, pool, timeouts, redirects, cookies), the URL
    `<base_url>chat/completions`, and the headers the SDK sends (authorization, content type,
    its default and custom headers, spelled as it spells them) merged over the httpx2 client's
    own, as its `build_request` merges them."""

    http: httpx2.AsyncClient
    url: httpx2.URL
    headers: httpx2.Headers
    timeout: dict[str, float | None]

    @classmethod
    def of(cls, client: openai.AsyncOpenAI, http: httpx2.AsyncClient) -> ChatStreamTarget:
        merged = {**client.auth_headers, **client.default_headers}
        sdk_headers = httpx2.Headers({k: v for k, v in merged.items() if isinstance(v, str)})
        sdk_headers["x-stainless-retry-count"] = "0"
        timeout = client.timeout
        read = timeout.read if isinstance(timeout, httpx2.Timeout) else timeout
        if read is not None:
            sdk_headers["x-stainless-read-timeout"] = str(read)
        headers = httpx2.Headers(http.headers)
        headers.update(list(sdk_headers.multi_items()))  # lower-cased names, as the SDK sends
        base = client.base_url  # the SDK keeps it ending with "/"
        url = base.copy_with(raw_path=base.raw_path + b"chat/completions")
        return cls(http, url, headers, http.timeout.as_dict())

    def request(self, content: bytes) -> httpx2.Request:
        """What `http.build_request` makes, without merging the same headers again per call
        (about 70 us of the 100 it takes). Unless the client holds cookies (an upstream or a
        balancer in front of it set some): those are sent back, as the SDK did."""
        if self.http.cookies:
            return self.http.build_request("POST", self.url, content=content, headers=self.headers)
        return httpx2.Request(
            "POST",
            self.url,
            headers=self.headers,
            content=content,
            extensions={"timeout": self.timeout},
        )


class _Reply:
    """What a streamed reply has said so far: for the usage estimate when the upstream sends
    none, and whether every choice got its `finish_reason`."""

    __slots__ = ("completion_id", "finished", "model", "output", "usage_seen")

    def __init__(self, model: str) -> None:
        self.completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        self.model = model
        self.usage_seen = False
        self.output: list[str] = []
        # Choice index -> whether it got its `finish_reason`.
        self.finished: dict[int, bool] = {}

    def take(self, payload: bytes) -> dict[str, Any]:
        """One event's data as the chunk we pass on; an `error` object is the upstream failing
        mid-answer (what the SDK raised as `openai.APIError`)."""
        try:
            raw = json.loads(payload)
        except ValueError:
            raise LLMUnavailable("the model's server sent a chunk that is not JSON") from None
        if not isinstance(raw, dict):
            raise LLMUnavailable("the model's server sent a chunk that is not an object")
        error = raw.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else None
            if not message or not isinstance(message, str):
                message = "An error occurred during streaming"
            raise _stream_error(error, message)
        data = dump_chunk(raw)
        self.completion_id = data.get("id") or self.completion_id
        self.model = data.get("model") or self.model
        if data.get("usage"):
            self.usage_seen = True
        finished = self.finished
        for choice in data.get("choices") or []:
            index = int(choice.get("index") or 0)
            finished[index] = finished.get(index, False) or bool(choice.get("finish_reason"))
        self.output.append(_chunk_output_text(data))
        return data


def _error_body(response: httpx2.Response) -> object:
    """A read error answer's body as the SDK kept it: its JSON, else its text."""
    text = response.text.strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _drain(pieces: AsyncIterator[bytes]) -> None:
    """The body after `[DONE]`, read and dropped, so that an HTTP/1.1 connection is reused
    (closing a response before its end closes its connection); bounded, as the SDK does."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in pieces:
                pass
    except (TimeoutError, httpx2.HTTPError, httpx2.StreamError):
        pass  # what came before `[DONE]` stands; the connection is closed instead


class OpenAIChatClient:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        *,
        supports_tools: bool,
        calls: UpstreamCalls | None = None,
        target: ChatStreamTarget | None = None,
    ) -> None:
        self._client = client
        # Streamed calls bypass the SDK's request machinery (`_stream`).
        self._target = target or ChatStreamTarget.of(client, client._client)
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
        reply = _Reply(str(request["model"]))
        target = self._target
        try:
            # The SDK's own httpx2 client, request bytes (its JSON encoding) and headers, but not
            # its request machinery (options models, header merging per call, response and
            # stream wrappers, an SSE event object per line): at one call at a time that was
            # 0.8 ms of the time to the first chunk, and a quarter of the CPU of a call. Its
            # failures are mapped as `map_llm_error` maps the SDK's.
            content = json.dumps(
                self._body(request, stream_options),
                ensure_ascii=False,
                separators=(",", ":"),
                allow_nan=False,
            ).encode()
            response = await target.http.send(target.request(content), stream=True)
            try:
                if not response.is_success:
                    await response.aread()
                    raise _status_error(
                        response.status_code, _error_body(response), response.headers
                    )
                events = SSEData()
                pieces = response.aiter_bytes()
                done = False
                async for piece in pieces:
                    for payload in events.feed(piece):
                        if payload.startswith(b"[DONE]"):
                            done = True
                            break
                        yield reply.take(payload)
                    if done:
                        break
                else:
                    for payload in events.finish():
                        if payload.startswith(b"[DONE]"):
                            break
                        yield reply.take(payload)
                if done and response.http_version == "HTTP/1.1":
                    await _drain(pieces)
            finally:
                # Also when the consumer stops early (it closes this generator): the
                # connection is released (closed, since its response was not read to the end).
                await response.aclose()
        except Exception as exc:  # mapped into our two kinds; programming errors re-raised
            raise map_llm_error(exc) from exc
        # A reply counts as whole only when every choice said why it stopped: `[DONE]` is not
        # required, and a connection-delimited body closed mid-reply just ends.
        if not reply.finished or not all(reply.finished.values()):
            # Retryable, like a dropped connection; the caller bills what was produced (it
            # counts the text it relayed), since the upstream did the work.
            raise LLMReplyCut("the model's reply ended before it finished")
        if not reply.usage_seen:
            prompt = estimate_prompt_tokens(body)
            completion = estimate_tokens("".join(reply.output))
            usage = usage_dict(prompt, completion, estimated=True)
            yield usage_chunk(reply.completion_id, reply.model, usage)

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
        # Per cached SDK client, where its streamed chat calls go (dropped with it).
        self._targets: dict[tuple[str, str | None], ChatStreamTarget] = {}
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
        client = self.openai_client(base_url, api_key)
        return OpenAIChatClient(
            client,
            settings.llm_model,
            supports_tools=supports_tools,
            calls=self._calls,
            target=self._targets[(base_url, api_key)],
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
        # The SDK's own default client (its limits, redirects, proxies from the environment),
        # its connections on the asyncio backend (app/platform/http_transport).
        http = openai.DefaultAsyncHttpxClient(timeout=timeout, transport=sdk_transport(_SDK_LIMITS))
        client = openai.AsyncOpenAI(
            base_url=base_url,
            # Keyless local servers still need a value for the SDK; it is never a real secret.
            api_key=api_key or "sk-no-key",
            timeout=timeout,
            # A chat call is not retried blindly: the caller decides (and may have billed it).
            max_retries=0,
            http_client=http,
        )
        self._clients[key] = client
        self._targets[key] = ChatStreamTarget.of(client, http)
        if len(self._clients) > _MAX_CACHED_CLIENTS:
            now = time.monotonic()
            while len(self._clients) > _MAX_CACHED_CLIENTS:
                evicted_key, evicted = self._clients.popitem(last=False)
                del self._targets[evicted_key]
                self._retired.append((now, evicted))
            while self._retired and now - self._retired[0][0] > _RETIRED_GRACE_SECONDS:
                self._spawn(self._retired.popleft()[1].close())
        return client

    async def aclose(self) -> None:
        clients = list(self._clients.values()) + [c for _, c in self._retired]
        self._clients.clear()
        self._targets.clear()
        self._retired.clear()
        for client in clients:
            await client.close()
