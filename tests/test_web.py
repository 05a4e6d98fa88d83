"""The web app served by the backend (app/web.py): the build's files, index.html for the
client's routes, the API's own answers unchanged, and a page saying how to build when there
is no build. Also: the committed web/openapi.json (the input of the app's generated types) is
the app's document, so the types cannot drift from the API."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tools.dump_openapi import OUT, document

INDEX = "<!doctype html><title>agentmem</title><div id=root></div>"


def _client(dist: Path) -> httpx.AsyncClient:
    settings = Settings(_env_file=None, environment="test", web_dist_dir=dist)  # type: ignore[call-arg]
    app = create_app(settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(INDEX)
    (tmp_path / "assets" / "app.js").write_text("console.log('app')")
    (tmp_path.parent / "secret.txt").write_text("not for the web")
    return tmp_path


async def test_index_and_assets_are_served(dist: Path) -> None:
    async with _client(dist) as client:
        root = await client.get("/")
        asset = await client.get("/assets/app.js")
    assert root.status_code == 200 and root.text == INDEX
    assert root.headers["content-type"].startswith("text/html")
    assert asset.status_code == 200 and asset.text == "console.log('app')"
    assert "javascript" in asset.headers["content-type"]


@pytest.mark.parametrize("path", ["/chat", "/chat/0b9c0f5e-1111-4222-8333-444455556666", "/usage"])
async def test_client_routes_fall_back_to_index(dist: Path, path: str) -> None:
    async with _client(dist) as client:
        response = await client.get(path)
    assert response.status_code == 200 and response.text == INDEX


async def test_paths_outside_the_build_are_not_served(dist: Path) -> None:
    async with _client(dist) as client:
        response = await client.get("/assets/%2e%2e/%2e%2e/secret.txt")
    assert "not for the web" not in response.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/no-such-route", 404),
        ("GET", "/api", 404),
        ("GET", "/health/nothing", 404),
        ("PUT", "/api/v1/auth/login", 405),
    ],
)
async def test_the_api_keeps_its_own_answers(
    dist: Path, method: str, path: str, status: int
) -> None:
    async with _client(dist) as client:
        response = await client.request(method, path)
    assert response.status_code == status
    assert response.json()["error"]["code"] in ("not_found", "method_not_allowed")


async def test_docs_and_openapi_are_the_apis(dist: Path) -> None:
    async with _client(dist) as client:
        docs = await client.get("/docs")
        spec = (await client.get("/openapi.json")).json()
    assert "swagger-ui" in docs.text.lower()
    assert all(not path.startswith("/{") for path in spec["paths"])


async def test_without_a_build_root_says_how_to_build(tmp_path: Path) -> None:
    async with _client(tmp_path / "missing") as client:
        root = await client.get("/")
        health = await client.get("/health/live")
    assert root.status_code == 200 and "make web" in root.text
    assert health.status_code == 200


def test_committed_openapi_document_is_the_apps() -> None:
    """`make openapi` rewrites web/openapi.json; then `cd web && npm run gen`."""
    assert json.loads(OUT.read_text()) == json.loads(document()), (
        "web/openapi.json is stale: run `make openapi` and `cd web && npm run gen`"
    )


GENERATOR = OUT.parent / "node_modules" / ".bin" / "openapi-typescript"


@pytest.mark.skipif(
    not GENERATOR.exists(), reason="web/node_modules is not installed (make web installs it)"
)
def test_committed_types_are_generated_from_the_committed_document(tmp_path: Path) -> None:
    """web/src/api/schema.d.ts is `npm run gen`'s output for web/openapi.json, not edited."""
    out = tmp_path / "schema.d.ts"
    done = subprocess.run(
        [str(GENERATOR), str(OUT), "-o", str(out)],
        cwd=OUT.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    committed = OUT.parent / "src" / "api" / "schema.d.ts"
    assert committed.read_text() == out.read_text(), (
        "web/src/api/schema.d.ts is stale: run `make openapi`"
    )
