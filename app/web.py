"""The web app (web/, built into web/dist) served at `/`, beside the API.

Files of the build are served as they are; any other path that is not the API's, the health
checks' or the docs' gets index.html, so the client's routes (/chat/<id>, /usage, /memory)
survive a reload. None of these routes is in the OpenAPI document. Without a build the API
works as before and `/` says how to make one.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.convertors import StringConvertor, register_url_convertor

DEFAULT_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"


class WebPathConvertor(StringConvertor):
    """Any path but the server's own (the API, the health checks, the metrics, the docs): a
    route matched there keeps its 404 / 405 answers (a catch-all that matched them would turn
    a wrong method on an API route into the app's page)."""

    regex = r"(?!api(/|$)|health(/|$)|metrics$|docs(/|$)|redoc(/|$)|openapi\.json$).*"


register_url_convertor("webpath", WebPathConvertor())

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>agentmem</title></head>
<body><main><h1>agentmem</h1>
<p>The API is running (<a href="/docs">/docs</a>), but the web app is not built.</p>
<p>Build it with <code>make web</code>
(or <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>);
<code>make run</code> does this when the build is missing or out of date.</p>
</main></body></html>
"""


def install_web(app: FastAPI, dist: Path = DEFAULT_DIST) -> None:
    """Adds the web app's routes; call after the API's routers, as the fallback matches any
    path."""
    root = dist.resolve()

    @app.get("/{path:webpath}", include_in_schema=False)
    async def web_app(path: str) -> Response:
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT)
        if path:
            file = (root / path).resolve()
            # Inside the build only: `..` in a path never reaches the rest of the disk.
            if file.is_relative_to(root) and file.is_file():
                return FileResponse(file)
        return FileResponse(index)
