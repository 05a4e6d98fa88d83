"""The client's address, decided in one place: `scope["client"]`, which `request.client` reads
(the per-IP rate limits, and anything else that asks).

`X-Forwarded-For` is a list the client starts and every proxy appends to: `client, proxy1,
proxy2`, each entry written by the hop after it. Only the entries our own proxies appended can
be believed, and they are the right-most ones. So with TRUSTED_PROXY_COUNT = N (the number of
proxies in front of the app, each appending to the header), the client is the N-th entry from
the right; anything left of it was written by the client and is ignored. With N = 0 (the
default) the header is not read at all and the socket peer is the client.

uvicorn's own proxy handling (`--proxy-headers` with `FORWARDED_ALLOW_IPS`) is not used:
trusting every peer (`*`, needed where the proxy's address is not fixed, as on Railway) makes
it take the left-most entry, which the client writes. `python -m app` turns it off.

Some proxies instead set a header of their own to the address they saw (Railway documents
`X-Real-IP`), overwriting whatever the client sent: CLIENT_IP_HEADER names it, and then, behind
TRUSTED_PROXY_COUNT > 0, its last value is the client and X-Forwarded-For is not read.

The same hops also set `X-Forwarded-Proto`; with N > 0 its right-most value (the one our
nearest proxy wrote) becomes the request's scheme, as uvicorn's handling did.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

# An entry longer than this is not an address (and must not become a large rate-limit key).
_MAX_ENTRY = 64


def _header_entries(scope: Scope, name: bytes) -> list[str]:
    """Every comma-separated entry of every `name` header, in order."""
    entries: list[str] = []
    for key, value in scope.get("headers", ()):
        if key == name:
            entries.extend(
                part.strip() for part in value.decode("latin-1").split(",") if part.strip()
            )
    return entries


def _normalize(entry: str) -> str:
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return entry[:_MAX_ENTRY]


def forwarded_client(
    scope: Scope, trusted_proxy_count: int, client_ip_header: bytes | None = None
) -> str | None:
    """The client address our proxies vouch for, or None to keep the socket peer.
    `client_ip_header`: a lower-case header name a trusted proxy sets to the client address."""
    if trusted_proxy_count <= 0:
        return None
    if client_ip_header:
        values = _header_entries(scope, client_ip_header)
        return _normalize(values[-1]) if values else None
    hops = _header_entries(scope, b"x-forwarded-for")
    if not hops:
        return None
    # Fewer entries than proxies: every entry was written by one of ours; the left-most is the
    # farthest address they saw.
    index = max(len(hops) - trusted_proxy_count, 0)
    return _normalize(hops[index])


class ClientAddressMiddleware:
    """Puts the client address our trusted proxies report into the ASGI scope."""

    def __init__(
        self, app: ASGIApp, *, trusted_proxy_count: int, client_ip_header: str | None = None
    ) -> None:
        self.app = app
        self.trusted_proxy_count = trusted_proxy_count
        self.client_ip_header = (
            client_ip_header.strip().lower().encode() if client_ip_header else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.trusted_proxy_count > 0:
            client = forwarded_client(scope, self.trusted_proxy_count, self.client_ip_header)
            if client is not None:
                scope["client"] = (client, 0)
            protos = _header_entries(scope, b"x-forwarded-proto")
            if protos and protos[-1].lower() in ("http", "https"):
                scope["scheme"] = protos[-1].lower()
        await self.app(scope, receive, send)
