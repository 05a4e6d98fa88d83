"""The LLM route's use case: admission, the user's route to the model, usage recorded once.

Admission with the budget in our database (`billing.ledger`): the call's worst case is
reserved before the upstream is called, in one conditional statement that is also the budget
check (402 when it does not fit): its prompt tokens bounded from above
(`prompt_token_bound`) plus `max_tokens` (or `max_completion_tokens`; times `n`), or
`LLM_RESERVE_MAX_TOKENS` when the request gives none, at the model's price. After the call the
reservation is settled to the real cost in the same transaction that records the usage; a
call that fails before its first chunk releases it. So with `max_tokens` given, concurrent
calls never spend past the budget. A reservation never outlives `LLM_RESERVATION_TTL_SECONDS`
as a hold on the budget (a process that crashed mid-call cannot settle it): the next admission
that would be refused frees expired ones first.

With LiteLLM (no ledger) nothing is reserved here: the budget and its spend live in LiteLLM,
which checks the user's key against `max_budget` before each call; we hold no spend figure to
reserve against without reading LiteLLM's per call (an HTTP round trip, and LiteLLM itself
updates spend after calls, so it would still race). The bound there is LiteLLM's own.

Counting: every call adds its tokens and cost to `usage_daily` and charges the budget, in one
transaction, after the answer (or the stream) ends. `usage_daily.messages` counts chat turns
only, so an LLM-route call adds 0 there. Tokens come from the upstream's `usage`; when it sends
none (llama.cpp on streamed calls), or the stream breaks, or the client goes away mid-stream,
they are estimated from the text (about 4 characters per token) and billed as such.

Which model: with LiteLLM the user's own key is used and LiteLLM enforces which models that
key may call, so the requested model is passed through. Otherwise the call goes to our own
upstream on our account, and the configured `LLM_MODEL` is always used (a request must not
pick a model the price table does not bill).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from app.config import Settings
from app.errors import AppError
from app.platform.db import Database
from app.platform.json_text import compact_json_ascii
from app.platform.metrics import Metrics, UsageSource
from app.providers.billing import BillingProvider, Reservation, TokenUsage, estimate_tokens
from app.providers.builtin.llm import LLMClients, estimate_prompt_tokens, prompt_token_bound
from app.usage.repository import add_usage

logger = logging.getLogger(__name__)


class LLMProxy:
    """The LLM route's use case, built once by the composition root. Usage recordings and
    upstream closes that must outlive a request whose client went away run as the app's
    background tasks (awaited at shutdown)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        billing: BillingProvider,
        llm: LLMClients,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._billing = billing
        self._llm = llm
        self._spawn = spawn
        self._metrics = metrics or Metrics()

    async def _prepare(
        self, user_id: UUID, body: dict[str, Any]
    ) -> tuple[Any, dict[str, Any], Reservation | None]:
        ledger = self._billing.ledger
        if ledger is None:
            await self._billing.check(user_id)
        route = await self._billing.llm_route(user_id)
        client = self._llm.for_route(route)
        if not route.billed_upstream:
            body = {**body, "model": client.model}
        reservation = None
        if ledger is not None:
            reservation = await ledger.reserve(user_id, self._worst_case(body))
        return client, body, reservation

    def _worst_case(self, body: dict[str, Any]) -> TokenUsage:
        limits = [
            value
            for value in (body.get("max_tokens"), body.get("max_completion_tokens"))
            if isinstance(value, int) and not isinstance(value, bool) and value > 0
        ]
        completion = max(limits) if limits else self._settings.llm_reserve_max_tokens
        choices = body.get("n")
        if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1:
            completion *= choices
        prompt = prompt_token_bound(body)
        return TokenUsage(str(body.get("model")), prompt, completion, prompt + completion)

    async def complete(self, user_id: UUID, body: dict[str, Any]) -> dict[str, Any]:
        answer, _, _ = await self.complete_billed(user_id, body)
        return answer

    async def complete_billed(
        self,
        user_id: UUID,
        body: dict[str, Any],
        *,
        background: bool = False,
        source: UsageSource = "llm_route",
    ) -> tuple[dict[str, Any], TokenUsage, float]:
        """`complete`, also answering what the call used and cost (the memory pass, a call
        of the app's own, is billed to the user through here like any other). `background`:
        see `ChatClient.complete` (a preempted call is released, not charged). `source`: the
        usage metrics' label (the memory pass counts as `memory_pass`)."""
        client, body, reservation = await self._prepare(user_id, body)
        try:
            answer: dict[str, Any] = await client.complete(body, background=background)
        except BaseException:
            await self._release_detached(reservation)
            raise
        usage = _usage_from(answer.get("usage"), answer.get("model") or body["model"])
        cost = await self._record(user_id, usage, reservation, source)
        return answer, usage, cost

    async def open_stream(self, user_id: UUID, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """Starts the upstream call now, so that a refusal before the first chunk is an HTTP
        error status; afterwards failures are an OpenAI-style `error` data line."""
        client, body, reservation = await self._prepare(user_id, body)
        chunks = client.stream(body)
        try:
            first = await chunks.__anext__()
        except BaseException:
            self._spawn(_aclose(chunks))
            await self._release_detached(reservation)
            raise
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        relay = self._relay(user_id, first, chunks, body, wants_usage, reservation)
        # Started up to its first `yield` here, inside its try: from now on its `finally`
        # (bill, settle, close the upstream) runs however the response ends, even when the
        # client is gone before the response sends a byte (a generator never started would
        # be dropped without running it, and its reservation would wait for its expiry).
        await relay.__anext__()
        return relay

    async def _relay(
        self,
        user_id: UUID,
        first: dict[str, Any],
        chunks: AsyncGenerator[dict[str, Any], None],
        body: dict[str, Any],
        wants_usage: bool,
        reservation: Reservation | None,
    ) -> AsyncGenerator[bytes, None]:
        usage: TokenUsage | None = None
        output: list[str] = []
        model = str(first.get("model") or body.get("model"))
        try:
            yield b""  # taken by open_stream, never sent
            chunk: dict[str, Any] | None = first
            while chunk is not None:
                if chunk.get("usage"):
                    usage = _usage_from(chunk["usage"], str(chunk.get("model") or model))
                output.append(_chunk_text(chunk))
                visible = _visible(chunk, wants_usage)
                if visible is not None:
                    yield _data(visible)
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    chunk = None
            yield b"data: [DONE]\n\n"
        except AppError as exc:
            # The stream ends on the error line, without `[DONE]`: `[DONE]` says the reply is
            # whole, and a client (the openai SDK raises on this line) must not take a cut-off
            # reply for a finished one.
            yield _data({"error": {"message": exc.message, "type": exc.code, "code": exc.code}})
        finally:
            # Stop the upstream call too when the client went away (closing is detached: this
            # task may be in the middle of being cancelled).
            self._spawn(_aclose(chunks))
            if usage is None:
                prompt = estimate_prompt_tokens(body)
                completion = estimate_tokens("".join(output))
                usage = TokenUsage(model, prompt, completion, prompt + completion, estimated=True)
            # Recorded in a task of its own: a client that goes away cancels this response,
            # and the call must still be billed, exactly once.
            task = self._spawn(self._record_logged(user_id, usage, reservation))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def _record_logged(
        self, user_id: UUID, usage: TokenUsage, reservation: Reservation | None
    ) -> None:
        try:
            await self._record(user_id, usage, reservation)
        except Exception:
            # The reservation (if any) stays until it expires: holding too much is the safe
            # side while the charge is unknown.
            logger.exception("recording LLM-route usage failed")

    async def _release_detached(self, reservation: Reservation | None) -> None:
        """Release in a task of its own (the caller may be being cancelled), awaited unless
        the caller is cancelled meanwhile."""
        if reservation is None:
            return
        task = self._spawn(self._release_logged(reservation))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    async def _release_logged(self, reservation: Reservation) -> None:
        ledger = self._billing.ledger
        assert ledger is not None  # a reservation comes from the ledger
        try:
            await ledger.release(reservation)
        except Exception:
            logger.exception("releasing an LLM-route reservation failed (it expires)")

    async def _record(
        self,
        user_id: UUID,
        usage: TokenUsage,
        reservation: Reservation | None = None,
        source: UsageSource = "llm_route",
    ) -> float:
        async with self._db.transaction() as conn:
            ledger = self._billing.ledger
            if reservation is not None and ledger is not None:
                cost = await ledger.settle(conn, reservation, usage)
            else:
                cost = await self._billing.record(conn, user_id, usage)
            await add_usage(
                conn,
                user_id,
                datetime.now(UTC),
                model=usage.model,
                messages=0,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
                cost=cost,
            )
        self._metrics.charged(
            usage.model, usage.prompt_tokens, usage.completion_tokens, cost, source
        )
        return cost


async def _aclose(chunks: AsyncGenerator[dict[str, Any], None]) -> None:
    with contextlib.suppress(Exception):
        await chunks.aclose()


def _usage_from(raw: object, model: str) -> TokenUsage:
    data = raw if isinstance(raw, dict) else {}
    prompt = int(data.get("prompt_tokens") or 0)
    completion = int(data.get("completion_tokens") or 0)
    total = int(data.get("total_tokens") or prompt + completion)
    cost = data.get("cost")
    return TokenUsage(
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        estimated=bool(data.get("estimated")) or not data,
        cost=float(cost) if isinstance(cost, int | float) else None,
    )


def _chunk_text(chunk: dict[str, Any]) -> str:
    text = ""
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        text += delta.get("content") or ""
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            text += (function.get("name") or "") + (function.get("arguments") or "")
    return text


def _visible(chunk: dict[str, Any], wants_usage: bool) -> dict[str, Any] | None:
    """The chunk as the client asked for it: usage only with `stream_options.include_usage`
    (we always ask the upstream for it, to bill)."""
    if wants_usage or "usage" not in chunk:
        return chunk
    if not chunk.get("choices"):
        return None
    return {k: v for k, v in chunk.items() if k != "usage"}


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + compact_json_ascii(payload).encode() + b"\n\n"
