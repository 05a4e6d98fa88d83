"""Response headers (issue 12 item 12): no sniffing, no referrer, no framing, nothing cached
(login and refresh answers carry tokens), and HSTS only on requests that came over TLS."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.main import create_app
from app.platform.middleware import SecurityHeadersMiddleware

API = "/api/v1"
ALWAYS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
}
YEAR = 365 * 24 * 3600


def assert_hardened(response: httpx.Response) -> None:
    for name, value in ALWAYS.items():
        assert response.headers.get_list(name) == [value], (name, response.headers)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health/live"),
        ("GET", "/openapi.json"),
        ("GET", f"{API}/auth/me"),  # 401
        ("GET", "/nowhere"),  # 404
        ("POST", f"{API}/auth/login"),  # 422
    ],
)
async def test_every_response_is_hardened(
    method: str, path: str, client: httpx.AsyncClient
) -> None:
    response = await client.request(method, path)
    assert_hardened(response)
    assert response.headers.get_list("cache-control") == ["no-store"]
    assert "strict-transport-security" not in response.headers  # plain http


async def test_a_cors_preflight_is_hardened(client: httpx.AsyncClient) -> None:
    response = await client.options(
        f"{API}/chat/message",
        headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert_hardened(response)


async def test_login_and_refresh_answers_are_not_stored(client: httpx.AsyncClient) -> None:
    credentials = {"email": "cache@example.com", "password": "a long enough secret"}
    registered = await client.post(f"{API}/auth/register", json=credentials)
    assert registered.status_code == 201, registered.text
    login = await client.post(f"{API}/auth/login", json=credentials)
    assert login.status_code == 200, login.text
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": login.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    for response in (registered, login, refreshed):
        assert response.headers.get_list("cache-control") == ["no-store"]
        assert_hardened(response)


async def test_hsts_only_over_tls(client: httpx.AsyncClient) -> None:
    # The ASGI scheme is what counts: it is taken from X-Forwarded-Proto only for trusted
    # proxies (TRUSTED_PROXY_COUNT), so the header itself, from anyone, must not turn HSTS on.
    spoofed = await client.get("/health/live", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in spoofed.headers
    transport = client._transport  # the same app, reached over https
    async with httpx.AsyncClient(transport=transport, base_url="https://test") as tls:
        response = await tls.get("/health/live")
    assert response.headers.get_list("strict-transport-security") == [f"max-age={YEAR}"]
    assert_hardened(response)


async def test_hsts_is_a_setting(settings_factory: Callable[..., Settings]) -> None:
    for seconds, expected in ((0, None), (600, "max-age=600")):
        app = create_app(settings_factory(hsts_max_age_seconds=seconds))
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="https://test") as tls:
                response = await tls.get("/health/live")
        assert response.headers.get("strict-transport-security") == expected


async def test_hsts_behind_a_trusted_proxy(settings_factory: Callable[..., Settings]) -> None:
    """Behind TLS-terminating proxies (TRUSTED_PROXY_COUNT > 0) the scheme comes from the
    proxy's X-Forwarded-Proto, settled by the client-address middleware before the security
    headers look at it; without trusted proxies the same header is ignored."""
    for proxies, expected in ((1, "max-age=600"), (0, None)):
        settings = settings_factory(hsts_max_age_seconds=600, trusted_proxy_count=proxies)
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                response = await c.get(
                    "/health/live",
                    headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
                )
        assert response.headers.get("strict-transport-security") == expected, proxies


async def test_a_response_keeps_its_own_headers() -> None:
    async def own(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"cache-control", b"max-age=60"), (b"X-Frame-Options", b"SAMEORIGIN")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    transport = httpx.ASGITransport(app=SecurityHeadersMiddleware(own, hsts_max_age_seconds=60))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        response = await c.get("/")
    assert response.headers.get_list("cache-control") == ["max-age=60"]
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers["x-content-type-options"] == "nosniff"
