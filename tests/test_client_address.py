"""The client address (app/platform/client_address.py): the N-th X-Forwarded-For entry from the
right with N trusted proxies, never an entry the client wrote; the socket peer with N = 0."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from app.platform.client_address import ClientAddressMiddleware, forwarded_client


def scope(*headers: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
        "client": ("10.0.0.9", 4242),
    }


XFF = "X-Forwarded-For"


@pytest.mark.parametrize(
    ("headers", "count", "expected"),
    [
        ([(XFF, "6.6.6.6, 203.0.113.5")], 0, None),  # 0: the header is not read
        ([(XFF, "6.6.6.6, 203.0.113.5")], 1, "203.0.113.5"),
        ([(XFF, "203.0.113.5")], 1, "203.0.113.5"),
        ([(XFF, "6.6.6.6, 7.7.7.7, 203.0.113.5, 10.1.1.1")], 2, "203.0.113.5"),
        # fewer entries than proxies: all were written by ours, take the farthest
        ([(XFF, "203.0.113.5")], 2, "203.0.113.5"),
        # several headers are one list, in order
        ([(XFF, "6.6.6.6"), (XFF, "203.0.113.5")], 1, "203.0.113.5"),
        ([(XFF, " 2001:DB8::1 ")], 1, "2001:db8::1"),
        ([(XFF, "6.6.6.6,,  ")], 1, "6.6.6.6"),
        ([], 1, None),  # no header: the peer
        ([(XFF, "x" * 500)], 1, "x" * 64),  # not an address: bounded
    ],
)
def test_forwarded_client(headers: list[tuple[str, str]], count: int, expected: str | None) -> None:
    assert forwarded_client(scope(*headers), count) == expected


def probe_app(count: int) -> FastAPI:
    app = FastAPI()

    @app.get("/who")
    async def who(request: Request) -> dict[str, str]:
        assert request.client is not None
        return {"host": request.client.host, "scheme": request.url.scheme}

    app.add_middleware(ClientAddressMiddleware, trusted_proxy_count=count)
    return app


async def ask(count: int, headers: dict[str, str]) -> dict[str, str]:
    transport = httpx.ASGITransport(app=probe_app(count), client=("10.0.0.9", 4242))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer: dict[str, str] = (await client.get("/who", headers=headers)).json()
        return answer


async def test_request_client_is_the_peer_without_trusted_proxies() -> None:
    answer = await ask(0, {XFF: "6.6.6.6", "X-Forwarded-Proto": "https"})
    assert answer == {"host": "10.0.0.9", "scheme": "http"}


async def test_request_client_and_scheme_come_from_the_trusted_proxy() -> None:
    headers = {XFF: "6.6.6.6, 203.0.113.5", "X-Forwarded-Proto": "gopher, https"}
    assert await ask(1, headers) == {"host": "203.0.113.5", "scheme": "https"}


@pytest.mark.parametrize(
    ("headers", "count", "expected"),
    [
        ([("X-Real-IP", "203.0.113.5"), (XFF, "6.6.6.6")], 1, "203.0.113.5"),
        ([("X-Real-IP", "6.6.6.6"), ("X-Real-IP", "203.0.113.5")], 1, "203.0.113.5"),
        ([(XFF, "203.0.113.5")], 1, None),  # the named header is missing: the peer
        ([("X-Real-IP", "203.0.113.5")], 0, None),  # no trusted proxy: not read
    ],
)
def test_client_ip_header(headers: list[tuple[str, str]], count: int, expected: str | None) -> None:
    assert forwarded_client(scope(*headers), count, b"x-real-ip") == expected
