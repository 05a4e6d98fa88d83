"""The built-in identity provider against a real Postgres."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from uuid import UUID

import asyncpg
import pytest
from jose import jwt

from app.config import Settings
from app.platform.db import Database
from app.providers.builtin.identity import BuiltinIdentity
from app.providers.factory import build_verifier
from app.providers.identity import EmailTaken, InvalidCredentials, InvalidRefreshToken

PASSWORD = "correct horse battery"
MY_TABLES = ("identity_credentials", "identity_sessions", "identity_refresh_tokens")


@pytest.fixture
def identity_settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(password_hash_time_cost=1, password_hash_memory_kib=8192)


@pytest.fixture
async def identity(
    identity_settings: Settings, database_url: str
) -> AsyncIterator[BuiltinIdentity]:
    db = Database(database_url, min_size=1, max_size=4)
    await db.connect()
    yield BuiltinIdentity(identity_settings, db)
    await db.close()


async def test_create_user_hashes_with_argon2id(
    identity: BuiltinIdentity, db_pool: asyncpg.Pool
) -> None:
    user = await identity.create_user("Mixed@Example.com", PASSWORD, {"display_name": "M"})
    assert user.email == "mixed@example.com"
    assert user.metadata == {"display_name": "M"}
    async with db_pool.acquire() as conn:
        row = await conn.fetchrow("select * from auth.users where id = $1", user.id)
        stored = await conn.fetchval(
            "select password_hash from identity_credentials where user_id = $1", user.id
        )
    # (the test pool has no jsonb codec: the value arrives as text)
    assert json.loads(row["raw_app_meta_data"]) == {"provider": "email", "providers": ["email"]}
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,")
    with pytest.raises(EmailTaken):
        await identity.create_user("MIXED@example.COM", "another password", {})


async def test_tokens_carry_supabase_claims_and_verify(
    identity: BuiltinIdentity, identity_settings: Settings, db_pool: asyncpg.Pool
) -> None:
    user = await identity.create_user("claims@example.com", PASSWORD, {})
    async with db_pool.acquire() as conn:
        await conn.execute(
            'update auth.users set raw_app_meta_data = raw_app_meta_data || \'{"role": "admin"}\''
            " where id = $1",
            user.id,
        )
    session = await identity.sign_in("Claims@Example.com", PASSWORD)
    claims = jwt.get_unverified_claims(session.access_token)
    assert jwt.get_unverified_header(session.access_token)["alg"] == "HS256"
    assert claims["sub"] == str(user.id)
    assert claims["email"] == "claims@example.com"
    assert claims["role"] == "authenticated"
    assert claims["aud"] == identity_settings.jwt_audience
    assert claims["iss"] == identity_settings.jwt_issuer
    assert claims["exp"] - claims["iat"] == identity_settings.access_token_ttl_seconds
    assert UUID(claims["session_id"])
    assert claims["app_metadata"]["role"] == "admin"

    verified = await build_verifier(identity_settings, None).verify(session.access_token)  # type: ignore[arg-type]
    assert verified.sub == user.id
    assert verified.is_admin
    assert verified.session_id == claims["session_id"]


async def test_refresh_tokens_are_stored_hashed_and_rotated(
    identity: BuiltinIdentity, db_pool: asyncpg.Pool
) -> None:
    await identity.create_user("rotate@example.com", PASSWORD, {})
    first = await identity.sign_in("rotate@example.com", PASSWORD)
    async with db_pool.acquire() as conn:
        hashes = [
            r["token_hash"]
            for r in await conn.fetch("select token_hash from identity_refresh_tokens")
        ]
    assert hashes == [hashlib.sha256(first.refresh_token.encode()).hexdigest()]
    assert len(first.refresh_token) >= 40

    second = await identity.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    third = await identity.refresh(second.refresh_token)
    assert (
        jwt.get_unverified_claims(third.access_token)["session_id"]
        == jwt.get_unverified_claims(first.access_token)["session_id"]
    )

    # Reuse of a spent token revokes the session: the newest token dies with it.
    with pytest.raises(InvalidRefreshToken):
        await identity.refresh(first.refresh_token)
    with pytest.raises(InvalidRefreshToken):
        await identity.refresh(third.refresh_token)
    async with db_pool.acquire() as conn:
        reason = await conn.fetchval("select revoked_reason from identity_sessions")
    assert reason == "refresh_token_reused"


async def test_sign_out_revokes_only_that_session(identity: BuiltinIdentity) -> None:
    await identity.create_user("two@example.com", PASSWORD, {})
    laptop = await identity.sign_in("two@example.com", PASSWORD)
    phone = await identity.sign_in("two@example.com", PASSWORD)
    await identity.sign_out(laptop.access_token, None)
    with pytest.raises(InvalidRefreshToken):
        await identity.refresh(laptop.refresh_token)
    assert (await identity.refresh(phone.refresh_token)).user.email == "two@example.com"


async def test_sign_in_failures_and_delete(identity: BuiltinIdentity) -> None:
    user = await identity.create_user("gone@example.com", PASSWORD, {})
    with pytest.raises(InvalidCredentials):
        await identity.sign_in("gone@example.com", "wrong password")
    with pytest.raises(InvalidCredentials):
        await identity.sign_in("nobody@example.com", PASSWORD)
    session = await identity.sign_in("gone@example.com", PASSWORD)
    await identity.delete_user(user.id)
    with pytest.raises(InvalidCredentials):
        await identity.sign_in("gone@example.com", PASSWORD)
    with pytest.raises(InvalidRefreshToken):
        await identity.refresh(session.refresh_token)
    await identity.check()


async def test_rls_and_a_policy_per_operation(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        for table in MY_TABLES:
            assert await conn.fetchval(
                "select relrowsecurity from pg_class where oid = $1::regclass", f"public.{table}"
            ), table
            commands = {
                r["cmd"]
                for r in await conn.fetch(
                    "select cmd from pg_policies where schemaname = 'public' and tablename = $1",
                    table,
                )
            }
            assert commands == {"SELECT", "INSERT", "UPDATE", "DELETE"}, table
        # Secrets stay backend-only even for their owner.
        for table in ("identity_credentials", "identity_refresh_tokens"):
            assert not await conn.fetchval(
                "select has_table_privilege('authenticated', $1, 'select')", f"public.{table}"
            )
