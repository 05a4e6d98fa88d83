"""Accounts made straight in the database, and access tokens minted with the claims the
built-in identity issues: for tests of one feature that do not go through /auth/register."""

from __future__ import annotations

import time
import uuid
from typing import Any

from jose import jwt

from app.config import Settings


def mint_token(
    settings: Settings,
    user_id: uuid.UUID,
    email: str,
    *,
    admin: bool = False,
    ttl_seconds: int = 3600,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "email": email,
        "role": "authenticated",
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + ttl_seconds,
        "session_id": str(uuid.uuid4()),
        "app_metadata": {"role": "admin"} if admin else {},
    }
    return str(jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256"))
