"""Write the app's OpenAPI document to web/openapi.json (`make openapi`), the input of the web
app's generated types (`npm run gen`); tests/test_web_openapi.py checks the copy is current."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from app.config import Settings
from app.main import create_app

OUT = Path(__file__).resolve().parent.parent / "web" / "openapi.json"


def document() -> str:
    app = create_app(Settings(_env_file=None, environment="test"))  # type: ignore[call-arg]
    return json.dumps(app.openapi(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(document())
    sys.stdout.write(f"wrote {OUT}\n")
