"""The OpenAPI document makes TypeScript clients that compile under `tsc --strict` (issue 13
item 5): openapi-typescript's types and @hey-api/openapi-ts's SDK, generated from the app's
own document, plus a file that uses what a frontend uses (the operation names, the error code
enum, each SSE event's data type). The tools are pinned in tools/openapi-ts (its
package-lock.json; `make test` runs `npm ci` there)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from app.config import Settings
from app.main import create_app

TOOLS = Path(__file__).resolve().parent.parent / "tools" / "openapi-ts"
BIN = TOOLS / "node_modules" / ".bin"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node/npm are not on PATH: the generated TypeScript cannot be checked",
)

TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "target": "ES2022",
        "module": "ESNext",
        "moduleResolution": "Bundler",
        "lib": ["ES2022", "DOM", "DOM.Iterable"],
        "noUncheckedIndexedAccess": True,
    },
    "include": ["schema.d.ts", "hey/**/*.ts", "use.ts"],
}

# What a frontend writes against the generated code; a wrong name or type fails `tsc`.
USE = """
import type { components, operations } from "./schema";
import { register, sendMessage, chatCompletions } from "./hey/sdk.gen";
import type { DeltaEventOut, ErrorBody, UsageEventOut } from "./hey/types.gen";

const code: ErrorBody["code"] = "budget_exceeded";
const delta: components["schemas"]["DeltaEventOut"] = { text: "x" };
type PaymentRequired = operations["send_message"]["responses"][402];
const usage: Pick<UsageEventOut, "remaining_budget"> = { remaining_budget: null };
const chunk: components["schemas"]["ChatCompletionChunkOut"]["choices"] = [];
const sse: DeltaEventOut = delta;
void code; void usage; void chunk; void sse; void register; void sendMessage; void chatCompletions;
export type { PaymentRequired };
"""


def _run(args: list[str], cwd: Path) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"


def test_generated_typescript_compiles_under_strict(tmp_path: Path) -> None:
    if not (BIN / "tsc").exists():
        # The pinned tools are installed by `make test` (npm ci in tools/openapi-ts).
        _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], TOOLS)
    app = create_app(Settings(_env_file=None, environment="test"))  # type: ignore[call-arg]
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(app.openapi()))
    _run([str(BIN / "openapi-typescript"), str(spec), "-o", str(tmp_path / "schema.d.ts")], TOOLS)
    _run([str(BIN / "openapi-ts"), "-i", str(spec), "-o", str(tmp_path / "hey")], TOOLS)
    (tmp_path / "use.ts").write_text(USE)
    (tmp_path / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    _run([str(BIN / "tsc"), "-p", str(tmp_path / "tsconfig.json")], tmp_path)
