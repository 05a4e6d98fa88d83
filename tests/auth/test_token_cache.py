"""The verifier's cache of verified tokens: hits skip the check, never past `exp`, bounded,
and a rejected token is never remembered."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from jose import jwt

from app.auth import tokens
from app.auth.tokens import TokenVerifier
from app.errors import Unauthorized

SECRET = "cache-test-secret-0123456789abcdef0123456789"
ISS, AUD = "agentmem-test", "authenticated"


def token(exp_in: int = 600, **extra: Any) -> str:
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "role": "authenticated", "aud": AUD, "iss": ISS,
              "iat": now, "exp": now + exp_in, "session_id": str(uuid.uuid4()),
              **extra}  # fmt: skip
    return str(jwt.encode(claims, SECRET, algorithm="HS256"))


def counting(verifier: TokenVerifier) -> list[str]:
    calls: list[str] = []
    real = verifier._verify

    async def spy(raw: str) -> tokens.TokenClaims:
        calls.append(raw)
        return await real(raw)

    verifier._verify = spy  # type: ignore[method-assign]
    return calls


def verifier(**kwargs: Any) -> TokenVerifier:
    return TokenVerifier(issuer=ISS, audience=AUD, hs_secrets=[SECRET], **kwargs)


async def test_a_verified_token_is_checked_once() -> None:
    v = verifier()
    calls = counting(v)
    t = token()
    first, second = await v.verify(t), await v.verify(t)
    assert first == second and len(calls) == 1


async def test_a_cached_token_is_checked_again_after_its_exp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v = verifier()
    calls = counting(v)
    t = token(exp_in=30)
    await v.verify(t)
    exp = jwt.get_unverified_claims(t)["exp"]
    monkeypatch.setattr(tokens.time, "time", lambda: exp + 1.0)
    await v.verify(t)  # jose's own clock still says valid; the point is it was re-checked
    assert len(calls) == 2


async def test_cache_entries_expire_after_cache_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    v = verifier(cache_seconds=5)
    calls = counting(v)
    t = token()
    await v.verify(t)
    now = time.time()
    monkeypatch.setattr(tokens.time, "time", lambda: now + 6)
    await v.verify(t)
    assert len(calls) == 2


async def test_the_cache_is_bounded_least_recently_used_first() -> None:
    v = verifier(cache_size=2)
    calls = counting(v)
    a, b, c = token(), token(), token()
    await v.verify(a)
    await v.verify(b)
    await v.verify(a)  # a is now the most recent
    await v.verify(c)  # evicts b
    await v.verify(a)
    await v.verify(b)
    assert calls == [a, b, c, b]


async def test_a_rejected_token_is_never_cached() -> None:
    v = verifier()
    calls = counting(v)
    bad = token(role="anon")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await v.verify(bad)
    assert len(calls) == 2
    expired = token(exp_in=-10)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await v.verify(expired)
    assert len(calls) == 4
