"""The web app in a real browser (issue 14): web/e2e/scenario.mjs drives Debian's chromium with
playwright-core through the issue's scenario against the backend served here by uvicorn, with
the built-in providers and the scripted model. The screenshots it takes go to a temporary
folder (so `make test` leaves the tree clean), or with `make screenshots` (SCREENSHOT_DIR) to
docs/screenshots/, which the README shows. Skipped only without /usr/bin/chromium or node."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from tests.support.scripted_llm import Script, ScriptedLLM, Text, ToolCall

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCENARIO_SECONDS = 240

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or shutil.which("node") is None or shutil.which("npm") is None,
    reason=f"no browser test: needs {CHROMIUM} (apt-get install chromium) and node/npm",
)

GREETING = "Hello Grace, nice to meet you. How can I help you today with anything at all?"
STORY = " ".join(f"Once upon a time word{i}." for i in range(60))
SECOND_STORY = " ".join(f"Meanwhile part{i}." for i in range(60)) + " THE END."


def _memory_pass(body: dict[str, Any]) -> Script:
    """The memory pass's answer: a fact for each "Remember that I ..." in the exchange it was
    shown, none otherwise (the pass checks the fact is made of the user's words)."""
    shown = str(body["messages"][-1]["content"])
    facts = re.findall(r"^User: Remember that I ([^\n.]+)", shown, flags=re.MULTILINE)
    ops = [{"op": "add", "line": 0, "fact": f"They {fact}."} for fact in facts]
    return Text(json.dumps({"operations": ops}))


def _responder(body: dict[str, Any]) -> Script | None:
    """The model's answers, chosen from the request as a person would see them."""
    # First: the pass's request quotes the exchange, which would match the chat cases below.
    if "response_format" in body:
        return _memory_pass(body)
    messages = body["messages"]
    last = messages[-1]
    system = str(messages[0].get("content", ""))
    if last["role"] == "tool":
        return Text("Noted: you like green tea.")
    said = str(last.get("content", ""))
    if "Hello there" in said:
        return Text(GREETING, pause=0.05)
    if "long story" in said:
        return Text(STORY, pause=0.15)
    if "another story" in said:
        return Text(SECOND_STORY, pause=0.1)
    if "Other tab story" in said:
        return Text(" ".join(f"Elsewhere{i}." for i in range(30)), pause=0.05)
    if "green tea" in said:
        return ToolCall("core_memory_append", {"label": "human", "content": "Likes green tea."})
    if "work as a nurse" in said:
        return Text("Good to know.")
    if "favourite animal" in said:
        # The human block as edited in the memory page reaches the model in its prompt.
        known = "Favourite animal: cats" in system
        return Text("Your favourite animal is cats." if known else "I do not know yet.")
    return Text("All right.")


@pytest.fixture
async def live_url(
    settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> AsyncIterator[str]:
    if (
        not (WEB / "node_modules" / "playwright-core").exists()
        or not (WEB / "dist" / "index.html").exists()
    ):
        # `make test` does this first (make web); run alone, the test builds the app itself.
        env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True, env=env)
        subprocess.run(["npm", "run", "build"], cwd=WEB, check=True, env=env)
    scripted_llm.responder = _responder
    app = create_app(
        settings_factory(
            llm_base_url=scripted_llm.base_url,
            llm_model="scripted-model",
            chat_event_flush_seconds=0.02,
            sse_ping_seconds=0.5,
            web_dist_dir=WEB / "dist",
            # Low enough for the scenario's 429 step to reach it, above what it sends before.
            rate_limit="15/minute",
            # The pass after each turn (off in tests by default): its changes are listed on
            # the memory page.
            memory_pass="every_turn",
        )
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        config = uvicorn.Config(
            app, lifespan="off", log_level="critical", access_log=False, timeout_graceful_shutdown=1
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        await asyncio.wait_for(task, 10)
    sock.close()


async def test_the_issues_scenario_in_chromium(
    live_url: str, scripted_llm: ScriptedLLM, tmp_path: Path
) -> None:
    screenshots = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "AGENTMEM_URL": live_url,
        "SCREENSHOT_DIR": str(screenshots),
        "CHROMIUM": CHROMIUM,
    }
    process = await asyncio.create_subprocess_exec(
        "node",
        "e2e/scenario.mjs",
        cwd=WEB,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), SCENARIO_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, (out.decode(), err.decode())
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert "error" not in result, (
        f"{result['error']}\nsteps done: {result['steps']}\npage errors: {result['pageErrors']}"
    )
    notes = result["notes"]

    assert result["steps"] == [
        "signed up",
        "reply streamed",
        "stopped",
        "resumed after reload",
        "409 shown",
        "tool activity",
        "dashboard",
        "human block edited with a conflict merged",
        "archival add, find, edit, delete",
        "agent used the human block",
        "conversations renamed, created, deleted",
        "375 px",
        "budget used up",
        "429 shown",
        "signed out everywhere",
        "memory changes listed",
        "account deleted",
        "signing in again refused",
    ]
    # Streamed: the page showed the reply at several lengths before it was whole.
    assert notes["partialLengths"] >= 3
    # Stopped short of the whole story.
    assert "(stopped)" in notes["stoppedText"]
    assert len(notes["stoppedText"]) < len(STORY)
    # The reply that was running at the reload came back (still partial), then finished.
    assert "THE END." not in notes["afterReloadText"]
    assert SECOND_STORY in notes["resumedText"]
    # 409 while another tab's reply runs: said in words, not a raw error.
    assert notes["conflict"]["otherTab"] == 200
    assert notes["conflict"]["alert"].startswith("Conflict: ")
    # A dead access token: refreshed once (not once per request), still signed in.
    assert notes["refreshes"] == 1 and notes["signedIn"]
    # Every turn counted: today's usage on the dashboard (greeting, story, second story, tea).
    assert int(notes["messagesCard"]) >= 4
    # The stale edit was refused (the other tab's 200 came first), then merged by the user.
    assert notes["otherTab"] == 200
    assert notes["humanBlock"] == (
        "Name: Grace. Favourite animal: cats. Lives in Lisbon. Plays chess."
    )
    assert notes["found"] and all("Miso" in text for text in notes["found"])
    assert notes["passagesAfterPaging"] == 11  # 10, then 1 more
    # Newest first: the chat just started above the renamed one.
    assert notes["conversations"] == ["New chat", "Grace's chat"]
    # 375 px wide: no page scrolls sideways.
    assert notes["mobileOverflow"] == {"Usage": 0, "Memory": 0, "Chat": 0}
    assert "resets" in notes["budgetAlert"]
    assert notes["rateLimited"].startswith("Too many messages")
    # The memory pass ran after each turn; two of them (green tea, nurse) changed memory.
    statuses = [p.split(":") for p in notes["passes"]]
    assert {status for status, _ in statuses} == {"completed"}, notes["passes"]
    assert sorted(int(ops) for _, ops in statuses)[-3:] == [0, 1, 1], notes["passes"]
    # Listed newest first, a page at a time (1 a page in the test): the second after "Load more".
    nurse = "Added in human block: They work as a nurse."
    tea = "Added in human block: They like green tea."
    assert notes["changesFirstPage"] == [nurse]
    assert notes["changes"] == [nurse, tea]
    assert any(p.endswith(": completed, 1 change") for p in notes["recentPasses"])
    # Account deletion: not before DELETE is typed; a wrong password is refused in words,
    # cleared from the form, and leaves the user signed in; the right one deletes.
    assert notes["enabledBeforeTypingDelete"] is False
    assert notes["wrongPassword"] == {
        "alert": "Your account was not deleted: the password is not correct",
        "passwordField": "",
        "signedIn": True,
    }
    assert notes["deletedNotice"] == "Your account was deleted, with everything it had."
    assert notes["sessionAfterDeletion"] is None
    # Gone: the same email and password no longer sign in.
    assert notes["signInAgain"] == {
        "alert": "invalid email or password",
        "signedIn": 0,
        "login": 401,
    }
    assert result["axe"] and all(not v for v in result["axe"].values()), result["axe"]
    assert result["pageErrors"] == []
    for name in ("signup", "chat", "dashboard", "memory", "chat-375", "budget-used-up"):
        assert (screenshots / f"{name}.png").stat().st_size > 0
