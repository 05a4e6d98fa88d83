"""The memory benchmark (`make bench-memory`): does the agent get back what it was told?

A scripted person (bench/memory_scenario.py) plants 22 facts over five sessions among filler,
corrects six of them later, then asks about each. The app runs in this process (the built-in
agent and billing, a fresh Postgres database) with a small context window
(`--context-tokens`, default 1024), so the plantings leave the window long before the
questions, against bench/memory_llm.py, which records every prompt. Three modes:

- window: the message window only (AGENT_AUTO_RECALL_LIMIT=0, MEMORY_PASS=off);
- recall: today's automatic recall (archival + summarized-away messages searched with the
  user's message, AGENT_AUTO_RECALL_LIMIT=3), MEMORY_PASS=off;
- pass: the memory pass after every turn (MEMORY_PASS=every_turn), recall on as well.

Metric (a), model-independent: the share of questions whose expected latest fact (every
keyword of one of its alternatives) is in the prompt of the chat call that answers it, the
question itself left out. Metric (b): the share of answers that contain it, when a real model
answers (the built-in SmolLM2 if installed, `--answerer builtin`; any model at
LLM_BASE_URL, `--answerer url`). The pass's extraction is answered by the oracle (correct
operations from the scenario's annotations) unless `--extractor builtin|url`.

Cost per mode: the tokens of every model call (chat, recall summaries, passes; counted by the
model server, or estimated at 4 characters a token for scripted answers), the time to `done`
of each turn, and the passes' own time (from GET /agent/memory/passes).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from bench.environment import create_database, drop_database
from bench.memory_llm import (
    Forward,
    MemoryBenchLLM,
    Recorded,
    builtin_forward,
    upstream_forward,
)
from bench.memory_scenario import (
    CORRECTED_KEYS,
    QUESTIONS,
    SESSIONS,
    Question,
    Turn,
    latest_statements,
)

MODES = ("window", "recall", "pass")
FINISHED = ("completed", "failed", "refused", "abandoned")


@dataclass
class QuestionResult:
    key: str
    in_prompt: bool
    answered: bool | None  # None: no real model answered
    answer: str


@dataclass
class ModeResult:
    mode: str
    extractor: str
    answerer: str
    questions: list[QuestionResult] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)  # per call kind: prompt+completion
    calls: dict[str, int] = field(default_factory=dict)
    turn_seconds: list[float] = field(default_factory=list)
    question_seconds: list[float] = field(default_factory=list)  # the questions' turns only
    pass_ms: list[int] = field(default_factory=list)
    pass_status: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    human_block_chars: int = 0

    def share(self, keys: set[str] | None = None, *, answered: bool = False) -> float | None:
        chosen = [q for q in self.questions if keys is None or q.key in keys]
        if not chosen:
            return None
        if answered:
            if any(q.answered is None for q in chosen):
                return None
            return sum(bool(q.answered) for q in chosen) / len(chosen)
        return sum(q.in_prompt for q in chosen) / len(chosen)


def _contains(text: str, question: Question) -> bool:
    lowered = text.casefold()
    return any(all(k.casefold() in lowered for k in alt) for alt in question.expected)


def _prompt_without_question(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return "\n".join(str(m.get("content") or "") for m in messages[:-1])


async def _chat(
    client: httpx.AsyncClient, headers: dict[str, str], content: str
) -> tuple[str, str, float]:
    """(turn id, reply, seconds to `done`)."""
    started = time.monotonic()
    response = await client.post(
        "/api/v1/chat/message", json={"content": content}, headers=headers, timeout=600
    )
    seconds = time.monotonic() - started
    response.raise_for_status()
    turn_id, reply, done = "", "", False
    for block in response.text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":"
        )
        if fields.get("event") == "turn":
            turn_id = json.loads(fields["data"])["turn_id"]
        elif fields.get("event") == "message":
            reply = json.loads(fields["data"])["text"]
        elif fields.get("event") == "done":
            done = True
        elif fields.get("event") == "error":
            raise RuntimeError(f"turn failed: {fields['data']}")
    if not done:
        raise RuntimeError(f"turn did not finish: {response.text[-300:]}")
    return turn_id, reply, seconds


async def _wait_pass(
    client: httpx.AsyncClient, headers: dict[str, str], turn_id: str, within: float
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        response = await client.get(
            "/api/v1/agent/memory/passes", params={"turn_id": turn_id}, headers=headers
        )
        items = response.json()["items"]
        if items and items[0]["status"] in FINISHED:
            return dict(items[0])
        if time.monotonic() > deadline:
            raise RuntimeError(f"the memory pass of {turn_id} did not finish: {items}")
        await asyncio.sleep(0.05)


def _settings(mode: str, dsn: str, llm: MemoryBenchLLM, args: argparse.Namespace) -> Settings:
    return Settings(
        _env_file=None,
        environment="test",
        database_url=dsn,
        log_level="WARNING",
        llm_base_url=llm.base_url,
        llm_model="bench-model",
        # As the built-in model: no tool calls, so memory reaches the prompt by recall.
        llm_supports_tools=False,
        llm_context_tokens=args.context_tokens,
        agent_auto_recall_limit=0 if mode == "window" else 3,
        memory_pass="every_turn" if mode == "pass" else "off",
        memory_pass_poll_seconds=0.05,
        memory_pass_timeout_seconds=args.pass_timeout,
        memory_pass_max_tokens=args.pass_max_tokens,
        chat_event_flush_seconds=0.02,
        rate_limit="1000000/minute",
        auth_rate_limit="1000000/minute",
        user_default_budget=1000.0,
        user_max_budget=1000.0,
    )


def _turns(args: argparse.Namespace) -> list[Turn]:
    sessions = SESSIONS[:1] if args.smoke else SESSIONS
    return [turn for session in sessions for turn in session]


def _questions(args: argparse.Namespace) -> list[Question]:
    if not args.smoke:
        return list(QUESTIONS)
    # Only facts whose latest value is told in the turns run (not corrected later).
    planted = {s for turn in _turns(args) for s in turn.statements}
    latest = latest_statements()
    return [q for q in QUESTIONS if latest[q.key] in planted]


async def run_mode(
    mode: str,
    dsn: str,
    args: argparse.Namespace,
    *,
    extractor: tuple[str, Forward | None],
    answerer: tuple[str, Forward | None],
) -> ModeResult:
    llm = MemoryBenchLLM(extractor=extractor[1], answerer=answerer[1])
    questions = _questions(args)
    llm.questions = {q.text for q in questions}
    llm.start()
    result = ModeResult(mode, extractor[0] if mode == "pass" else "-", answerer[0])
    started = time.monotonic()
    try:
        application = create_app(_settings(mode, dsn, llm, args))
        async with LifespanManager(application, startup_timeout=60, shutdown_timeout=60):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                registered = await client.post(
                    "/api/v1/auth/register",
                    json={
                        "email": f"bench-{uuid.uuid4().hex[:8]}@example.com",
                        "password": "memory bench password 1",
                    },
                )
                registered.raise_for_status()
                headers = {"Authorization": f"Bearer {registered.json()['access_token']}"}

                async def turn(content: str) -> tuple[str, str]:
                    turn_id, reply, seconds = await _chat(client, headers, content)
                    result.turn_seconds.append(seconds)
                    if mode == "pass":
                        done = await _wait_pass(client, headers, turn_id, args.pass_timeout + 30)
                        result.pass_ms.append(int(done["duration_ms"] or 0))
                        status = (
                            done["status"]
                            if not done["error"]
                            else f"{done['status']}:{done['error']}"
                        )
                        result.pass_status[status] = result.pass_status.get(status, 0) + 1
                    return turn_id, reply

                for planted in _turns(args):
                    await turn(planted.message)
                for question in questions:
                    asked_at = len(result.turn_seconds)
                    _, reply = await turn(question.text)
                    result.question_seconds.append(result.turn_seconds[asked_at])
                    asked = [r for r in llm.calls("chat") if _last(r) == question.text]
                    prompt = _prompt_without_question(asked[-1].body) if asked else ""
                    result.questions.append(
                        QuestionResult(
                            question.key,
                            _contains(prompt, question),
                            _contains(reply, question) if answerer[1] is not None else None,
                            reply,
                        )
                    )
                block = await client.get("/api/v1/agent/memory/blocks/human", headers=headers)
                result.human_block_chars = len(block.json()["value"])
    finally:
        llm.stop()
    result.wall_seconds = time.monotonic() - started
    for recorded in llm.recorded:
        result.tokens[recorded.kind] = result.tokens.get(recorded.kind, 0) + _total(recorded)
        result.calls[recorded.kind] = result.calls.get(recorded.kind, 0) + 1
    return result


def _last(recorded: Recorded) -> str:
    messages = recorded.body.get("messages") or []
    return str(messages[-1].get("content") or "") if messages else ""


def _total(recorded: Recorded) -> int:
    usage = recorded.usage
    return int(usage.get("total_tokens") or 0) or int(usage.get("prompt_tokens") or 0) + int(
        usage.get("completion_tokens") or 0
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def render(results: list[ModeResult]) -> str:
    head = (
        f"{'mode':<7} {'extractor':<9} {'answerer':<8} {'(a) all':>8} {'(a) corr.':>9} "
        f"{'(b) all':>8} {'turns':>5} {'chat tok':>9} {'pass tok':>9} {'done p50':>9} "
        f"{'q done':>8} {'pass p50':>9} {'wall':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        turns = len(r.turn_seconds)
        chat_tokens = r.tokens.get("chat", 0) + r.tokens.get("summary", 0)
        pass_tokens = r.tokens.get("pass", 0)
        done = statistics.median(r.turn_seconds) if r.turn_seconds else 0.0
        asked = statistics.median(r.question_seconds) if r.question_seconds else 0.0
        pass_p50 = f"{statistics.median(r.pass_ms) / 1000:.2f}s" if r.pass_ms else "-"
        lines.append(
            f"{r.mode:<7} {r.extractor:<9} {r.answerer:<8} {_pct(r.share()):>8} "
            f"{_pct(r.share(set(CORRECTED_KEYS))):>9} {_pct(r.share(answered=True)):>8} "
            f"{turns:>5} {chat_tokens / max(1, turns):>9.0f} {pass_tokens / max(1, turns):>9.0f} "
            f"{done:>8.2f}s {asked:>7.2f}s {pass_p50:>9} {r.wall_seconds:>6.0f}s"
        )
    lines.append("")
    lines.append(
        "(a) all / corr.: questions whose latest fact is in the answering prompt (all of them / "
        "the corrected ones); (b): answers containing it (real answering model only). Tokens "
        "per turn: chat = replies + recall summaries, pass = the memory pass's calls. done p50: "
        "time to `done` over all turns (plantings are answered by the script), q done: over the "
        "questions' turns (answered by the answering model)."
    )
    for r in results:
        missed = [q.key for q in r.questions if not q.in_prompt]
        extra = f"; passes {r.pass_status}" if r.pass_status else ""
        lines.append(
            f"{r.mode}/{r.extractor}/{r.answerer}: missing from the prompt: "
            f"{', '.join(missed) or 'none'}; human block {r.human_block_chars} chars{extra}"
        )
    return "\n".join(lines)


def _answerers(args: argparse.Namespace) -> list[tuple[str, Forward | None]]:
    chosen: list[tuple[str, Forward | None]] = []
    wanted = args.answerer.split(",")
    if "none" in wanted:
        chosen.append(("scripted", None))
    if "builtin" in wanted or "auto" in wanted:
        if _builtin_available():
            chosen.append(("builtin", builtin_forward(max_tokens=args.answer_max_tokens)))
        else:
            print("bench-memory: the built-in model is not installed (make model): (b) skipped")
    if "url" in wanted or "auto" in wanted:
        forward = _url_forward(args)
        if forward is not None:
            chosen.append(("url", forward))
        else:
            print("bench-memory: LLM_BASE_URL is not set: (b) with an API model skipped")
    if not chosen:
        chosen.append(("scripted", None))
    return chosen


def _url_forward(args: argparse.Namespace) -> Forward | None:
    base_url = os.environ.get("LLM_BASE_URL")
    if not base_url:
        return None
    return upstream_forward(
        base_url,
        os.environ.get("LLM_API_KEY"),
        os.environ.get("LLM_MODEL", "gpt-4o-mini"),
        max(args.answer_max_tokens, args.pass_max_tokens),
    )


def _builtin_available() -> bool:
    from app.providers.builtin.local_model import default_model_path

    return importlib.util.find_spec("llama_cpp") is not None and default_model_path() is not None


def _extractor(args: argparse.Namespace) -> tuple[str, Forward | None]:
    if args.extractor == "builtin":
        if not _builtin_available():
            raise SystemExit(
                "bench-memory: --extractor builtin needs the built-in model (make model)"
            )
        return "builtin", builtin_forward()
    if args.extractor == "url":
        forward = _url_forward(args)
        if forward is None:
            raise SystemExit("bench-memory: --extractor url needs LLM_BASE_URL")
        return "url", forward
    return "oracle", None


async def bench(args: argparse.Namespace) -> int:
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"bench-memory: unknown modes {sorted(unknown)}; use {MODES}")
    name, dsn = await create_database()
    results: list[ModeResult] = []
    try:
        extractor = _extractor(args)
        for answerer in _answerers(args):
            for mode in modes:
                print(f"bench-memory: {mode} (answerer {answerer[0]}) ...", flush=True)
                results.append(
                    await run_mode(mode, dsn, args, extractor=extractor, answerer=answerer)
                )
    finally:
        await drop_database(name)
    print()
    print(render(results))
    if args.json:
        text = json.dumps([_as_dict(r) for r in results], indent=2)
        await asyncio.to_thread(Path(args.json).write_text, text)
    return 0


def _as_dict(result: ModeResult) -> dict[str, Any]:
    return {
        "mode": result.mode,
        "extractor": result.extractor,
        "answerer": result.answerer,
        "a_all": result.share(),
        "a_corrected": result.share(set(CORRECTED_KEYS)),
        "b_all": result.share(answered=True),
        "tokens": result.tokens,
        "calls": result.calls,
        "turns": len(result.turn_seconds),
        "done_p50_seconds": statistics.median(result.turn_seconds) if result.turn_seconds else None,
        "question_done_p50_seconds": (
            statistics.median(result.question_seconds) if result.question_seconds else None
        ),
        "pass_p50_ms": statistics.median(result.pass_ms) if result.pass_ms else None,
        "pass_status": result.pass_status,
        "wall_seconds": result.wall_seconds,
        "questions": [q.__dict__ for q in result.questions],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Memory benchmark: facts back in the prompt.")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: window,recall,pass")
    p.add_argument(
        "--answerer",
        default="auto",
        help="who answers questions: none (scripted), builtin, url, or auto (builtin when "
        "installed and url when LLM_BASE_URL is set; scripted when neither)",
    )
    p.add_argument("--extractor", choices=("oracle", "builtin", "url"), default="oracle")
    p.add_argument("--context-tokens", type=int, default=1024)
    p.add_argument("--answer-max-tokens", type=int, default=48)
    p.add_argument("--pass-max-tokens", type=int, default=384)
    p.add_argument("--pass-timeout", type=float, default=300.0)
    p.add_argument("--smoke", action="store_true", help="first session only (a quick check)")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.exit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
