"""Annotated dependency aliases over the long-lived objects the lifespan puts on app.state.

Every dependency here is `async def`: FastAPI runs a plain `def` dependency in the threadpool
(a thread hop per dependency per request), which for a one-line attribute read costs far more
than the read itself.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Request

from app.config import Settings
from app.db import Database
from app.providers.agents import AgentProvider
from app.providers.billing import BillingProvider
from app.providers.identity import IdentityProvider


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


async def _identity(request: Request) -> IdentityProvider:
    return request.app.state.identity  # type: ignore[no-any-return]


async def _billing(request: Request) -> BillingProvider:
    return request.app.state.billing  # type: ignore[no-any-return]


async def _agents(request: Request) -> AgentProvider:
    return request.app.state.agents  # type: ignore[no-any-return]


async def _http(request: Request) -> httpx.AsyncClient:
    return request.app.state.http  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
DbDep = Annotated[Database, Depends(_db)]
IdentityDep = Annotated[IdentityProvider, Depends(_identity)]
BillingDep = Annotated[BillingProvider, Depends(_billing)]
AgentsDep = Annotated[AgentProvider, Depends(_agents)]
HttpDep = Annotated[httpx.AsyncClient, Depends(_http)]
