"""Every forged or unacceptable access token gets 401 in the envelope on a protected endpoint,
in both verification modes: our HS256 secret (built-in identity) and Supabase's (ES256 JWKS,
or the legacy HS256 secret)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from jose import jwk, jwt

from app.auth.tokens import TokenVerifier
from app.config import Settings
from app.main import create_app

ME = "/api/v1/auth/me"
SUPABASE_URL = "https://proj.supabase.co"
SUPABASE_ISS = f"{SUPABASE_URL}/auth/v1"
JWKS_URL = f"{SUPABASE_ISS}/.well-known/jwks.json"
LEGACY_SECRET = "legacy-supabase-jwt-secret-0123456789abcdef"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(user_id: uuid.UUID, issuer: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "email": "tok@example.com",
        "role": "authenticated",
        "aud": "authenticated",
        "iss": issuer,
        "iat": now,
        "exp": now + 600,
        "session_id": str(uuid.uuid4()),
        "app_metadata": {"provider": "email"},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def hs256_raw(claims: dict[str, Any], secret: bytes, header: dict[str, Any] | None = None) -> str:
    """HS256 by hand: python-jose refuses a PEM as an HMAC secret, an attacker does not."""
    head = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def unsigned(claims: dict[str, Any]) -> str:
    head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{b64(json.dumps(claims).encode())}."


async def insert_user(pool: asyncpg.Pool) -> uuid.UUID:
    user_id = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            "insert into auth.users (id, email) values ($1, 'tok@example.com')", user_id
        )
        await conn.execute(
            "insert into profiles (id, email) values ($1, 'tok@example.com')", user_id
        )
    return user_id


async def get_me(client: httpx.AsyncClient, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return await client.get(ME, headers=headers)


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert error["request_id"] == response.headers["x-request-id"]
    assert response.headers["www-authenticate"] == "Bearer"


def pem_public(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_private(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    data = jwk.construct(pem_public(key), "ES256").to_dict()
    return {**data, "kid": kid, "alg": "ES256", "use": "sig", "key_ops": ["verify"]}


# --- built-in mode: HS256 with JWT_SECRET ---


async def test_builtin_mode_rejects_every_forgery(
    client: httpx.AsyncClient, db_pool: asyncpg.Pool, settings: Settings
) -> None:
    user_id = await insert_user(db_pool)
    secret = settings.jwt_secret.get_secret_value()
    iss = settings.jwt_issuer

    def signed(**overrides: Any) -> str:
        claims = {**claims_for(user_id, iss), **overrides}
        claims = {k: v for k, v in claims.items() if v is not None}
        return str(jwt.encode(claims, secret, algorithm="HS256"))

    # The control: a genuine token works, so the rejections below are about the token.
    good = await get_me(client, signed())
    assert good.status_code == 200, good.text
    assert good.json()["id"] == str(user_id)

    now = int(time.time())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forgeries = {
        "expired": signed(iat=now - 120, exp=now - 60),
        "wrong signature": str(
            jwt.encode(claims_for(user_id, iss), "another-secret-" * 4, algorithm="HS256")
        ),
        "tampered payload": _tamper(signed(), sub=str(uuid.uuid4())),
        "alg none": unsigned(claims_for(user_id, iss)),
        "alg none, signature kept": unsigned(claims_for(user_id, iss)) + signed().split(".")[2],
        "RS256 by an unknown key": str(
            jwt.encode(claims_for(user_id, iss), pem_private(rsa_key).decode(), algorithm="RS256")
        ),
        "wrong aud": signed(aud="someone-else"),
        "wrong iss": signed(iss="https://evil.example.com"),
        "no exp": signed(exp=None),
        "no sub": signed(sub=None),
        "non-uuid sub": signed(sub="admin"),
        "anon role": signed(role="anon"),
        "garbage": "not.a.jwt",
        "empty": "",
    }
    for name, token in forgeries.items():
        response = await get_me(client, token)
        assert response.status_code == 401, name
        assert_401(response)

    assert_401(await get_me(client, None))
    assert_401(await client.get(ME, headers={"Authorization": f"Basic {signed()}"}))
    assert_401(await client.get(ME, headers={"Authorization": signed()}))


def _tamper(token: str, **changes: Any) -> str:
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    return f"{head}.{b64(json.dumps(payload).encode())}.{sig}"


# --- Supabase mode: ES256 JWKS and the legacy HS256 secret ---


class Keys:
    def __init__(self) -> None:
        self.k1 = ec.generate_private_key(ec.SECP256R1())
        self.k2 = ec.generate_private_key(ec.SECP256R1())
        self.stranger = ec.generate_private_key(ec.SECP256R1())
        self.published = [public_jwk(self.k1, "k1")]

    def sign(self, key: ec.EllipticCurvePrivateKey, kid: str, claims: dict[str, Any]) -> str:
        return str(
            jwt.encode(claims, pem_private(key).decode(), algorithm="ES256", headers={"kid": kid})
        )


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def supabase_app_factory(
    settings_factory: Callable[..., Settings],
) -> Callable[..., Any]:
    def make(**overrides: Any) -> FastAPI:
        values = {
            "identity_provider": "supabase",
            "supabase_url": SUPABASE_URL,
            "supabase_anon_key": "anon-key-0123456789",
            "supabase_service_role_key": "service-key-0123456789",
            **overrides,
        }
        return create_app(settings_factory(**values))

    return make


@pytest.fixture
async def jwks_route(keys: Keys) -> AsyncIterator[respx.Route]:
    with respx.mock(assert_all_called=False) as router:
        route = router.get(JWKS_URL).mock(
            side_effect=lambda request: httpx.Response(200, json={"keys": keys.published})
        )
        yield route


@pytest.fixture
async def sb_client(
    supabase_app_factory: Callable[..., FastAPI], jwks_route: respx.Route
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = supabase_app_factory()
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield application, c


async def test_supabase_es256_jwks_cached_and_refetched_on_unknown_kid(
    sb_client: tuple[FastAPI, httpx.AsyncClient],
    jwks_route: respx.Route,
    keys: Keys,
    db_pool: asyncpg.Pool,
) -> None:
    app, client = sb_client
    user_id = await insert_user(db_pool)
    claims = claims_for(user_id, SUPABASE_ISS)

    for _ in range(3):
        response = await get_me(client, keys.sign(keys.k1, "k1", claims))
        assert response.status_code == 200, response.text
    assert jwks_route.call_count == 1  # cached

    # Supabase rotates: k2 is published; a token with the unknown kid triggers one refetch.
    keys.published = [public_jwk(keys.k1, "k1"), public_jwk(keys.k2, "k2")]
    verifier: TokenVerifier = app.state.services.verifier
    jwks = verifier._jwks
    assert jwks is not None
    jwks._fetched_at -= jwks._min_refetch_interval + 1  # the anti-flood interval has passed
    response = await get_me(client, keys.sign(keys.k2, "k2", claims))
    assert response.status_code == 200, response.text
    assert jwks_route.call_count == 2

    # Forged kids right after do not turn every request into a JWKS fetch.
    for i in range(3):
        assert_401(await get_me(client, keys.sign(keys.stranger, f"forged-{i}", claims)))
    assert jwks_route.call_count == 2

    # The cache has a bounded lifetime: once stale, even a known kid refetches.
    keys.published = [public_jwk(keys.k2, "k2")]  # k1 retired
    jwks._fetched_at -= jwks._ttl + 1
    assert_401(await get_me(client, keys.sign(keys.k1, "k1", claims)))
    assert jwks_route.call_count == 3
    assert (await get_me(client, keys.sign(keys.k2, "k2", claims))).status_code == 200


async def test_supabase_mode_rejects_forgeries(
    sb_client: tuple[FastAPI, httpx.AsyncClient], keys: Keys, db_pool: asyncpg.Pool
) -> None:
    _, client = sb_client
    user_id = await insert_user(db_pool)
    claims = claims_for(user_id, SUPABASE_ISS)
    assert (await get_me(client, keys.sign(keys.k1, "k1", claims))).status_code == 200
    now = int(time.time())
    public_pem = pem_public(keys.k1)
    forgeries = {
        "signed by a stranger under k1": keys.sign(keys.stranger, "k1", claims),
        "expired": keys.sign(
            keys.k1, "k1", claims_for(user_id, SUPABASE_ISS, iat=now - 120, exp=now - 60)
        ),
        "wrong aud": keys.sign(keys.k1, "k1", claims_for(user_id, SUPABASE_ISS, aud="anon")),
        "wrong iss": keys.sign(keys.k1, "k1", claims_for(user_id, "https://other.supabase.co")),
        "built-in issuer": keys.sign(keys.k1, "k1", claims_for(user_id, "agentmem")),
        "HS256 over the public key PEM": hs256_raw(
            claims, public_pem, {"alg": "HS256", "typ": "JWT", "kid": "k1"}
        ),
        "HS256 over the JWK json": hs256_raw(
            claims,
            json.dumps(public_jwk(keys.k1, "k1")).encode(),
            {"alg": "HS256", "typ": "JWT", "kid": "k1"},
        ),
        "alg none with kid": unsigned(claims),
        "RS256 header on an EC key": _retag(keys.sign(keys.k1, "k1", claims), "RS256"),
        "no kid": str(jwt.encode(claims, pem_private(keys.k1).decode(), algorithm="ES256")),
    }
    for name, token in forgeries.items():
        response = await get_me(client, token)
        assert response.status_code == 401, name
        assert_401(response)


def _retag(token: str, alg: str) -> str:
    head, body, sig = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    header["alg"] = alg
    return f"{b64(json.dumps(header).encode())}.{body}.{sig}"


async def test_supabase_legacy_hs256_secret(
    supabase_app_factory: Callable[..., FastAPI],
    jwks_route: respx.Route,
    keys: Keys,
    db_pool: asyncpg.Pool,
) -> None:
    application = supabase_app_factory(supabase_jwt_secret=LEGACY_SECRET)
    user_id = await insert_user(db_pool)
    claims = claims_for(user_id, SUPABASE_ISS)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            legacy = str(jwt.encode(claims, LEGACY_SECRET, algorithm="HS256"))
            assert (await get_me(client, legacy)).status_code == 200
            # Both modes at once while a project migrates to signing keys.
            assert (await get_me(client, keys.sign(keys.k1, "k1", claims))).status_code == 200
            forged = {
                "other secret": str(jwt.encode(claims, "x" * 40, algorithm="HS256")),
                "public key as secret": hs256_raw(claims, pem_public(keys.k1)),
                "our built-in secret": str(
                    jwt.encode(
                        claims,
                        Settings(_env_file=None).jwt_secret.get_secret_value(),  # type: ignore[call-arg]
                        algorithm="HS256",
                    )
                ),
                "wrong iss": str(
                    jwt.encode(claims_for(user_id, "agentmem"), LEGACY_SECRET, algorithm="HS256")
                ),
            }
            for name, token in forged.items():
                response = await get_me(client, token)
                assert response.status_code == 401, name
                assert_401(response)


async def test_supabase_without_legacy_secret_refuses_hs256(
    sb_client: tuple[FastAPI, httpx.AsyncClient], db_pool: asyncpg.Pool
) -> None:
    _, client = sb_client
    user_id = await insert_user(db_pool)
    token = str(jwt.encode(claims_for(user_id, SUPABASE_ISS), LEGACY_SECRET, algorithm="HS256"))
    assert_401(await get_me(client, token))


# --- required claims (issue #12 item 9): aud, iss, session_id; iat not in the future ---


def _claim_cases(user_id: uuid.UUID, iss: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    now = int(time.time())
    accepted = {
        "iat 20 s ahead (within the 30 s leeway)": claims_for(user_id, iss, iat=now + 20),
    }
    refused = {
        "no aud": claims_for(user_id, iss, aud=None),
        "no iss": claims_for(user_id, iss, iss=None),
        "iat 5 minutes ahead": claims_for(user_id, iss, iat=now + 300),
        "iat 31+ s ahead": claims_for(user_id, iss, iat=now + 45),
        "no iat": claims_for(user_id, iss, iat=None),
        "no session_id": claims_for(user_id, iss, session_id=None),
        "session_id not a uuid": claims_for(user_id, iss, session_id="s1"),
    }
    return accepted, refused


async def test_builtin_mode_requires_aud_iss_session_and_a_past_iat(
    client: httpx.AsyncClient, db_pool: asyncpg.Pool, settings: Settings
) -> None:
    user_id = await insert_user(db_pool)
    secret = settings.jwt_secret.get_secret_value()
    accepted, refused = _claim_cases(user_id, settings.jwt_issuer)
    for name, claims in accepted.items():
        response = await get_me(client, str(jwt.encode(claims, secret, algorithm="HS256")))
        assert response.status_code == 200, name
    for name, claims in refused.items():
        response = await get_me(client, str(jwt.encode(claims, secret, algorithm="HS256")))
        assert response.status_code == 401, name
        assert_401(response)


async def test_supabase_mode_requires_aud_iss_session_and_a_past_iat(
    sb_client: tuple[FastAPI, httpx.AsyncClient], keys: Keys, db_pool: asyncpg.Pool
) -> None:
    _, client = sb_client
    user_id = await insert_user(db_pool)
    accepted, refused = _claim_cases(user_id, SUPABASE_ISS)
    for name, claims in accepted.items():
        assert (await get_me(client, keys.sign(keys.k1, "k1", claims))).status_code == 200, name
    for name, claims in refused.items():
        response = await get_me(client, keys.sign(keys.k1, "k1", claims))
        assert response.status_code == 401, name
        assert_401(response)
