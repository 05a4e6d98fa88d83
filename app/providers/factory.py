"""Builds one provider per port from settings. The only place that picks an implementation."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from app.auth.revocations import SessionRevocations
from app.auth.tokens import JwksCache, TokenVerifier
from app.config import Settings
from app.platform.db import Database
from app.platform.metrics import Metrics
from app.providers.agents import AgentProvider
from app.providers.billing import BillingProvider
from app.providers.builtin.llm import LLMClients
from app.providers.identity import IdentityProvider
from app.providers.instrumented import instrument


@dataclass(frozen=True)
class Overrides:
    """Providers to use instead of the ones settings pick (tests, embedding the app): an
    overridden port's provider is not built at all."""

    identity: IdentityProvider | None = None
    billing: BillingProvider | None = None
    agents: AgentProvider | None = None


@dataclass
class Providers:
    identity: IdentityProvider
    billing: BillingProvider
    agents: AgentProvider
    verifier: TokenVerifier


def supabase_issuer(settings: Settings) -> str:
    return f"{(settings.supabase_url or '').rstrip('/')}/auth/v1"


def build_verifier(
    settings: Settings,
    http: httpx.AsyncClient,
    revocations: SessionRevocations | None = None,
) -> TokenVerifier:
    if settings.identity_provider == "supabase":
        jwks = JwksCache(
            f"{supabase_issuer(settings)}/.well-known/jwks.json",
            http,
            settings.supabase_jwks_ttl_seconds,
        )
        secret = settings.supabase_jwt_secret
        return TokenVerifier(
            issuer=supabase_issuer(settings),
            audience=settings.jwt_audience,
            hs_secrets=[secret.get_secret_value()] if secret else [],
            jwks=jwks,
            iat_leeway_seconds=settings.jwt_iat_leeway_seconds,
            revocations=revocations,
        )
    return TokenVerifier(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        hs_secrets=[settings.jwt_secret.get_secret_value()],
        iat_leeway_seconds=settings.jwt_iat_leeway_seconds,
        revocations=revocations,
    )


def build_identity(
    settings: Settings, db: Database, http: httpx.AsyncClient, metrics: Metrics
) -> IdentityProvider:
    if settings.identity_provider == "supabase":
        from app.providers.supabase.identity import SupabaseIdentity

        return instrument(SupabaseIdentity(settings, http), "supabase", metrics)
    from app.providers.builtin.identity import BuiltinIdentity

    return BuiltinIdentity(settings, db)


def build_billing(
    settings: Settings, db: Database, http: httpx.AsyncClient, metrics: Metrics
) -> BillingProvider:
    if settings.billing_provider == "litellm":
        from app.providers.litellm.billing import LiteLLMBilling

        # `record` only prices the usage (LiteLLM charged the key itself): no call.
        return instrument(LiteLLMBilling(settings, db, http), "litellm", metrics, local={"record"})
    from app.providers.builtin.billing import BuiltinBilling

    return BuiltinBilling(settings, db)


def build_agents(
    settings: Settings, db: Database, http: httpx.AsyncClient, llm: LLMClients, metrics: Metrics
) -> AgentProvider:
    if settings.agent_provider == "letta":
        from app.providers.letta.agents import LettaAgents

        return instrument(LettaAgents(settings, http), "letta", metrics)
    from app.providers.builtin.agents import BuiltinAgents

    return BuiltinAgents(settings, db, llm)


def build_providers(
    settings: Settings,
    db: Database,
    http: httpx.AsyncClient,
    llm: LLMClients,
    overrides: Overrides | None = None,
    revocations: SessionRevocations | None = None,
    metrics: Metrics | None = None,
) -> Providers:
    """The providers; those of outside services (Letta, LiteLLM, Supabase) with their calls
    counted and timed (app/providers/instrumented.py). The built-in ones work in our own
    database and process: their time is in the request and pool metrics."""
    chosen = overrides or Overrides()
    metrics = metrics or Metrics()
    return Providers(
        identity=chosen.identity or build_identity(settings, db, http, metrics),
        billing=chosen.billing or build_billing(settings, db, http, metrics),
        agents=chosen.agents or build_agents(settings, db, http, llm, metrics),
        verifier=build_verifier(settings, http, revocations),
    )
