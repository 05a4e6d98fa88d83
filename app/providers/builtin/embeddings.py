"""Embeddings for the built-in agent's archival memory: pgvector similarity beside full-text.

Similarity search is on only when both hold:
- an embeddings endpoint is configured: EMBEDDINGS_MODEL is set, served at EMBEDDINGS_BASE_URL,
  or at LLM_BASE_URL when that is unset (OpenAI, LiteLLM and vLLM serve chat and embeddings
  under one base URL). The key is EMBEDDINGS_API_KEY, else LLM_API_KEY but only when the
  embeddings go to LLM_BASE_URL: one service's key is never sent to another host;
- the database has the pgvector columns of `archival_passages` (the `vector` extension was
  available when the migrations ran: the embedded Postgres, Supabase). Checked once, on first
  use, by `ArchivalVectors.enabled()`.
Otherwise archival memory is searched by Postgres full-text search alone.

The endpoint is called with the `openai` SDK (`/embeddings`, `encoding_format="float"`: the
format every OpenAI-compatible server supports). A failed call never loses a passage: it is
stored without a vector (still found by full-text search) and a warning is logged that names
the failure's kind and status only (provider error messages can echo part of a key).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import openai

from app.config import Settings
from app.platform.db import Database
from app.providers.builtin.agent import repository
from app.providers.builtin.llm import LLMClients

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingsConfig:
    base_url: str
    model: str
    api_key: str | None
    dimensions: int | None

    def __repr__(self) -> str:  # never print the key
        return f"EmbeddingsConfig(base_url={self.base_url!r}, model={self.model!r})"


def embeddings_config(settings: Settings) -> EmbeddingsConfig | None:
    """Where embeddings come from, or None when none are configured."""
    model = (settings.embeddings_model or "").strip()
    base_url = settings.embeddings_base_url or settings.llm_base_url
    if not model or not base_url:
        return None
    api_key: str | None = None
    if settings.embeddings_api_key is not None:
        api_key = settings.embeddings_api_key.get_secret_value() or None
    if (
        api_key is None
        and settings.llm_api_key is not None
        and settings.llm_base_url
        and base_url.rstrip("/") == settings.llm_base_url.rstrip("/")
    ):
        api_key = settings.llm_api_key.get_secret_value() or None
    return EmbeddingsConfig(base_url, model, api_key, settings.embeddings_dimensions)


@dataclass(frozen=True)
class Embedding:
    """One vector and the model that made it (vectors of different models are never compared)."""

    model: str
    values: tuple[float, ...]

    def literal(self) -> str:
        """pgvector's text input form, `[1.0,2.5,...]`: sent as text and cast in SQL, so asyncpg
        needs no codec for the extension's type."""
        return "[" + ",".join(repr(v) for v in self.values) + "]"


class EmbeddingsFailed(Exception):
    """The embeddings call failed or answered something unusable. The message is safe to log."""


def _failure(exc: Exception) -> EmbeddingsFailed:
    if isinstance(exc, openai.APIStatusError):
        return EmbeddingsFailed(f"the embeddings endpoint answered {exc.status_code}")
    if isinstance(exc, openai.APITimeoutError):
        return EmbeddingsFailed("the embeddings endpoint timed out")
    if isinstance(exc, openai.APIConnectionError):
        return EmbeddingsFailed("the embeddings endpoint is unreachable")
    # Anything else the SDK raised (a malformed answer...): its type only.
    return EmbeddingsFailed(f"the embeddings call failed ({type(exc).__name__})")


class EmbeddingsClient:
    def __init__(self, settings: Settings, config: EmbeddingsConfig, llm: LLMClients) -> None:
        self._settings = settings
        self.config = config
        self._llm = llm

    async def embed(self, texts: Sequence[str]) -> list[Embedding]:
        """One vector per text, in order. Raises EmbeddingsFailed."""
        config = self.config
        # The app's client cache (closed at shutdown with the LLM clients); the embeddings
        # call gets its own, shorter timeout: a passage insert waits on it.
        client = self._llm.openai_client(config.base_url, config.api_key)
        timeout = openai.Timeout(
            self._settings.embeddings_timeout_seconds,
            connect=self._settings.http_connect_timeout,
        )
        try:
            if config.dimensions is not None:
                answer = await client.embeddings.create(
                    input=list(texts),
                    model=config.model,
                    encoding_format="float",
                    dimensions=config.dimensions,
                    timeout=timeout,
                )
            else:
                answer = await client.embeddings.create(
                    input=list(texts), model=config.model, encoding_format="float", timeout=timeout
                )
        except Exception as exc:  # mapped to one safe failure; the caller degrades
            raise _failure(exc) from exc
        data = sorted(answer.data, key=lambda item: item.index)
        if len(data) != len(texts):
            raise EmbeddingsFailed(f"expected {len(texts)} vectors, got {len(data)}")
        vectors = []
        for item in data:
            values = tuple(float(v) for v in item.embedding)
            if not values or not all(math.isfinite(v) for v in values):
                raise EmbeddingsFailed(
                    "the embeddings endpoint returned an empty or invalid vector"
                )
            if config.dimensions is not None and len(values) != config.dimensions:
                raise EmbeddingsFailed(
                    f"expected {config.dimensions} dimensions, got {len(values)}"
                )
            if not any(values):
                # A zero vector has no direction: cosine distance to it is undefined.
                raise EmbeddingsFailed("the embeddings endpoint returned a zero vector")
            vectors.append(Embedding(config.model, values))
        return vectors


class ArchivalVectors:
    """What archival memory asks: is similarity search on, and the vector for a text.

    One per agent provider (long-lived): the database check runs once."""

    def __init__(self, settings: Settings, db: Database, llm: LLMClients) -> None:
        self._settings = settings
        self._db = db
        config = embeddings_config(settings)
        self._client = EmbeddingsClient(settings, config, llm) if config is not None else None
        self._enabled: bool | None = None if config is not None else False
        self._lock = asyncio.Lock()

    @property
    def max_distance(self) -> float | None:
        return self._settings.embeddings_max_distance

    async def enabled(self) -> bool:
        if self._enabled is None:
            async with self._lock:
                if self._enabled is None:
                    async with self._db.acquire() as conn:
                        available = await repository.passage_vectors_available(conn)
                    if not available:
                        logger.info(
                            "archival memory: the database has no pgvector column (extension "
                            "missing); searching by full text only"
                        )
                    self._enabled = available
        return self._enabled

    async def _one(self, text: str, purpose: str) -> Embedding | None:
        if self._client is None or not text.strip() or not await self.enabled():
            return None
        try:
            (embedding,) = await self._client.embed([text])
        except EmbeddingsFailed as failure:
            logger.warning("archival memory: %s; %s", failure, purpose)
            return None
        return embedding

    async def passage(self, text: str) -> Embedding | None:
        """The passage's vector; None when off or when the call failed (stored without one)."""
        return await self._one(text, "passage stored without a vector")

    async def query(self, text: str) -> Embedding | None:
        """The query's vector; None when off or failed (the search is then full-text only)."""
        return await self._one(text, "searching by full text only")
