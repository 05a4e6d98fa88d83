"""Annotated dependency aliases over the long-lived objects of the composition root
(`app.state.services`, an `AppState` built by the lifespan; see app/composition.py).

Every dependency here is `async def`: FastAPI runs a plain `def` dependency in the threadpool
(a thread hop per dependency per request), which for a one-line attribute read costs far more
than the read itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import httpx
from fastapi import Depends, Request

from app.config import Settings
from app.platform.db import Database
from app.providers.agents import AgentProvider
from app.providers.billing import BillingProvider
from app.providers.identity import IdentityProvider

if TYPE_CHECKING:
    from app.composition import AppState
    from app.llm_proxy.service import LLMProxy


def services(request: Request) -> AppState:
    """The app's composition root, for code that has the request (dependencies)."""
    return request.app.state.services  # type: ignore[no-any-return]


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _db(request: Request) -> Database:
    return services(request).db


async def _identity(request: Request) -> IdentityProvider:
    return services(request).identity


async def _billing(request: Request) -> BillingProvider:
    return services(request).billing


async def _agents(request: Request) -> AgentProvider:
    return services(request).agents


async def _http(request: Request) -> httpx.AsyncClient:
    return services(request).http


async def _llm_proxy(request: Request) -> LLMProxy:
    return services(request).llm_proxy


SettingsDep = Annotated[Settings, Depends(_settings)]
DbDep = Annotated[Database, Depends(_db)]
IdentityDep = Annotated[IdentityProvider, Depends(_identity)]
BillingDep = Annotated[BillingProvider, Depends(_billing)]
AgentsDep = Annotated[AgentProvider, Depends(_agents)]
HttpDep = Annotated[httpx.AsyncClient, Depends(_http)]
LLMProxyDep = Annotated["LLMProxy", Depends(_llm_proxy)]
