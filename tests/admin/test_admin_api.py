"""The /admin API over the real app (built-in identity and billing, real Postgres)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
from fastapi import FastAPI

from app.usage.repository import add_usage
from tests.usage.conftest import MakeUser

ADMIN = "/api/v1/admin"


def today() -> date:
    return datetime.now(UTC).date()


async def add(pool: asyncpg.Pool, user_id: UUID, model: str, tokens: int, cost: float) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await add_usage(
            conn,
            user_id,
            datetime.combine(today(), time(0, 5), UTC),
            model=model,
            messages=1,
            prompt_tokens=tokens,
            completion_tokens=tokens,
            total_tokens=tokens * 2,
            cost=cost,
        )


def admin_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every admin operation the app serves, from its OpenAPI document (app.routes holds the
    included routers unexpanded in this FastAPI version)."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith(ADMIN):
            concrete = re.sub(r"\{[^}]+\}", str(uuid4()), path)
            found.extend((method.upper(), concrete) for method in sorted(operations))
    return found


async def test_every_admin_route_is_401_without_a_token_and_403_for_a_non_admin(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    routes = admin_routes(app)
    # The table is the app's own route list: a new /admin route is covered without an edit.
    assert len(routes) >= 6
    user = await make_user()
    for method, path in routes:
        body: dict[str, Any] | None = {"max_budget": 1.0} if method == "POST" else None
        anonymous = await client.request(method, path, json=body)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.json()["error"]["code"] == "unauthorized"
        denied = await client.request(method, path, json=body, headers=user.headers)
        assert denied.status_code == 403, (method, path, denied.text)
        assert denied.json()["error"]["code"] == "forbidden"


async def test_list_users_searches_by_email_prefix_and_pages_with_a_cursor(
    client: httpx.AsyncClient, make_user: MakeUser, db_pool: asyncpg.Pool
) -> None:
    admin = await make_user(admin=True, email="root@example.com")
    users = [await make_user(email=f"Alice{i}@example.com") for i in range(5)]
    await make_user(email="bob@example.com")
    await add(db_pool, users[0].id, "m1", 10, 0.25)

    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"email": "alice", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await client.get(f"{ADMIN}/users", params=params, headers=admin.headers)
        assert r.status_code == 200, r.text
        seen.extend(r.json()["users"])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert [u["email"] for u in seen] == [f"Alice{i}@example.com" for i in range(5)]
    first = seen[0]
    assert first["provisioning_status"] == "ready"
    assert first["spend"] == 0 and first["max_budget"] > 0
    assert first["last_activity_at"] is not None
    assert seen[1]["last_activity_at"] is None and first["disabled_at"] is None

    # LIKE's wildcards in the prefix are literal: "_" matches no one here.
    r = await client.get(f"{ADMIN}/users", params={"email": "_"}, headers=admin.headers)
    assert r.json()["users"] == []
    r = await client.get(f"{ADMIN}/users", params={"cursor": "x!"}, headers=admin.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"


async def test_user_detail_has_usage_by_day_and_model(
    client: httpx.AsyncClient, make_user: MakeUser, db_pool: asyncpg.Pool
) -> None:
    admin = await make_user(admin=True)
    user = await make_user()
    await add(db_pool, user.id, "m1", 10, 0.5)
    await add(db_pool, user.id, "m2", 5, 0.25)
    r = await client.get(f"{ADMIN}/users/{user.id}", headers=admin.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == str(user.id) and body["email"] == user.email
    assert body["usage"]["days"][-1]["date"] == today().isoformat()
    assert [m["model"] for m in body["usage"]["days"][-1]["models"]] == ["m1", "m2"]
    assert body["usage"]["totals"]["cost"] == 0.75
    missing = await client.get(f"{ADMIN}/users/{uuid4()}", headers=admin.headers)
    assert missing.status_code == 404


async def test_set_budget_is_applied_and_audited(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(admin=True)
    user = await make_user()
    before = (await client.get("/api/v1/user/budget", headers=user.headers)).json()
    r = await client.post(
        f"{ADMIN}/users/{user.id}/budget", json={"max_budget": 1234.5}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["max_budget"] == 1234.5
    now = (await client.get("/api/v1/user/budget", headers=user.headers)).json()
    assert now["max_budget"] == 1234.5

    audit = await client.get(f"{ADMIN}/audit", headers=admin.headers)
    assert audit.status_code == 200, audit.text
    (entry,) = audit.json()["entries"]
    assert entry["admin_user_id"] == str(admin.id)
    assert entry["target_user_id"] == str(user.id)
    assert entry["action"] == "set_budget"
    assert entry["before"]["max_budget"] == before["max_budget"]
    assert entry["after"]["max_budget"] == 1234.5

    bad = await client.post(
        f"{ADMIN}/users/{user.id}/budget", json={"max_budget": -1}, headers=admin.headers
    )
    assert bad.status_code == 422
    missing = await client.post(
        f"{ADMIN}/users/{uuid4()}/budget", json={"max_budget": 1}, headers=admin.headers
    )
    assert missing.status_code == 404
    # Neither refused change left an audit row.
    audit = await client.get(f"{ADMIN}/audit", headers=admin.headers)
    assert len(audit.json()["entries"]) == 1


async def test_audit_pages_newest_first_and_filters_by_user(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(admin=True)
    a, b = await make_user(), await make_user()
    for user, amount in ((a, 1.0), (b, 2.0), (a, 3.0)):
        r = await client.post(
            f"{ADMIN}/users/{user.id}/budget", json={"max_budget": amount}, headers=admin.headers
        )
        assert r.status_code == 200
    page = (await client.get(f"{ADMIN}/audit", params={"limit": 2}, headers=admin.headers)).json()
    assert [e["after"]["max_budget"] for e in page["entries"]] == [3.0, 2.0]
    rest = await client.get(
        f"{ADMIN}/audit", params={"cursor": page["next_cursor"]}, headers=admin.headers
    )
    assert [e["after"]["max_budget"] for e in rest.json()["entries"]] == [1.0]
    assert rest.json()["next_cursor"] is None
    only_a = await client.get(
        f"{ADMIN}/audit", params={"user_id": str(a.id)}, headers=admin.headers
    )
    assert [e["after"]["max_budget"] for e in only_a.json()["entries"]] == [3.0, 1.0]


async def test_platform_usage_sums_every_user_by_day_and_model(
    client: httpx.AsyncClient, make_user: MakeUser, db_pool: asyncpg.Pool
) -> None:
    admin = await make_user(admin=True)
    a, b = await make_user(), await make_user()
    await add(db_pool, a.id, "m1", 10, 0.5)
    await add(db_pool, b.id, "m1", 20, 0.25)
    await add(db_pool, b.id, "m2", 1, 0.125)
    r = await client.get(
        f"{ADMIN}/usage", params={"start": today().isoformat()}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    (day,) = r.json()["days"]
    assert day["cost"] == 0.875 and day["messages"] == 3
    m1, m2 = day["models"]
    assert (m1["model"], m1["users"], m1["prompt_tokens"]) == ("m1", 2, 30)
    assert (m2["model"], m2["users"]) == ("m2", 1)


async def test_reprovision_runs_the_saga_again_and_is_audited(
    client: httpx.AsyncClient, make_user: MakeUser, db_pool: asyncpg.Pool
) -> None:
    admin = await make_user(admin=True)
    user = await make_user()
    await db_pool.execute(
        "update profiles set provisioning_status = 'degraded', provisioning_error = 'x'"
        " where id = $1",
        user.id,
    )
    r = await client.post(f"{ADMIN}/users/{user.id}/provisioning", headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["provisioning_status"] == "ready"
    (entry,) = (await client.get(f"{ADMIN}/audit", headers=admin.headers)).json()["entries"]
    assert entry["action"] == "reprovision"
    assert entry["before"] == {"status": "degraded", "error": "x"}
    assert entry["after"] == {"status": "ready", "error": None}
