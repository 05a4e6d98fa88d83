"""What the memory pass asks the model, and how its answer becomes a plan. Pure: no I/O.

The human block holds one fact per line, so the model can name a fact by its line number;
the request shows the facts numbered, then the new exchange(s). The answer is constrained
to a JSON schema (`response_format`): OpenAI-compatible servers get `json_schema` (strict),
and the built-in model's client turns the same schema into a llama.cpp grammar, so even a
135M model that cannot call tools answers with parseable operations. Line numbers are
resolved to the lines' texts here, once: a plan names facts by their text, so it can be
applied again to a block that changed meanwhile (a user's edit) without touching the wrong
line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

OpName = Literal["add", "update", "delete", "archive"]

# A block line longer than this is not a "fact" but a story: it goes to archival memory.
MAX_FACT_CHARS = 200
MAX_ARCHIVE_CHARS = 600
MAX_OPERATIONS = 6
# Each exchange is cut to this many characters in the request (a long reply says little
# about the user, and the request must fit the model's context).
MAX_EXCHANGE_CHARS = 1200

SYSTEM_PROMPT = (
    "You maintain the long-term memory of a personal assistant about its user. You get the "
    "facts known so far (numbered lines) and the latest exchange. Answer with JSON "
    '{"operations": [...]}, each operation {"op", "line", "fact"}:\n'
    '- "add": a new lasting fact about the user (line 0): one short sentence in the third '
    'person ("Their ...", "They ..."), using only words of the exchange.\n'
    '- "update": the user corrected or changed a known fact: "line" is its number, "fact" '
    "the new sentence. Never add a second fact that contradicts a known one: update it.\n"
    '- "delete": a known fact is no longer true and nothing replaces it ("line" is its '
    'number, "fact" empty).\n'
    '- "archive": a longer story or detail worth keeping (line 0, "fact" the full text).\n'
    "Only facts the user stated about themselves and their life; nothing about the assistant, "
    'no questions, no small talk. Nothing new: {"operations": []}.'
)

OPERATIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["operations"],
    "properties": {
        "operations": {
            "type": "array",
            "maxItems": MAX_OPERATIONS,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["op", "line", "fact"],
                "properties": {
                    "op": {"type": "string", "enum": ["add", "update", "delete", "archive"]},
                    "line": {"type": "integer"},
                    "fact": {"type": "string", "maxLength": MAX_ARCHIVE_CHARS},
                },
            },
        }
    },
}

# Not `strict`: OpenAI's strict mode refuses `maxItems`/`maxLength`, which bound what a small
# local model can ramble (llama.cpp compiles them into the grammar; vLLM and llama.cpp's server
# enforce the schema either way). The answer is validated here whatever the server did.
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "memory_operations", "strict": False, "schema": OPERATIONS_SCHEMA},
}


@dataclass(frozen=True)
class Exchange:
    user: str
    assistant: str


def block_facts(value: str, placeholder: str) -> list[str]:
    """The block's facts, one per non-empty line; the default text (nothing known yet) is
    not a fact."""
    if value.strip() == placeholder.strip():
        return []
    return [line.strip() for line in value.splitlines() if line.strip()]


def request_body(facts: list[str], exchanges: list[Exchange], *, max_tokens: int) -> dict[str, Any]:
    known = "\n".join(f"{i}. {fact}" for i, fact in enumerate(facts, 1)) or "(none yet)"
    said = "\n\n".join(f"User: {_cut(e.user)}\nAssistant: {_cut(e.assistant)}" for e in exchanges)
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": f"Known facts:\n{known}\n\nLatest exchange:\n{said}\n\n"
                "Memory operations (JSON):",
            },
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "response_format": RESPONSE_FORMAT,
    }


def _cut(text: str) -> str:
    return text if len(text) <= MAX_EXCHANGE_CHARS else text[:MAX_EXCHANGE_CHARS] + "..."


class InvalidOperations(ValueError):
    """The model's answer is not the operations JSON the schema asks for."""


class _Op(BaseModel):
    model_config = ConfigDict(extra="ignore")
    op: OpName
    line: int = 0
    fact: str = ""


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    operations: list[_Op] = Field(default_factory=list)


def parse_answer(text: str) -> list[_Op]:
    """The operations in the model's answer; InvalidOperations when it is not that JSON (a
    model that ignores `response_format`, or an answer cut at `max_tokens`)."""
    candidate = text.strip()
    # Some servers without schema support wrap JSON in a Markdown fence.
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", candidate, flags=re.DOTALL)
    if fenced:
        candidate = fenced.group(1)
    try:
        data = json.loads(candidate)
        answer = _Answer.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise InvalidOperations(f"not memory operations JSON: {str(exc)[:200]}") from exc
    return answer.operations[:MAX_OPERATIONS]


@dataclass(frozen=True)
class Planned:
    """One operation with its line resolved to that line's text: `old` is the fact replaced
    or deleted (update, delete), `new` the fact written (add, update, archive)."""

    op: OpName
    old: str | None
    new: str | None


def one_line(text: str) -> str:
    return " ".join(text.split())


# Words that say nothing about what a fact is about (its frame, not its content).
_STOPWORDS = frozenset(
    word
    for line in (
        "the and but for are was were been being have has had not now their they them this that",
        "with from into onto who whom whose which what when where why how its his her hers our",
        "ours your yours you she him any all some more most very also just than then there here",
        "called named is am an of on in at to by as or it he we me my mine i a so do does did",
        "person user users",
    )
    for word in line.split()
)
# A written fact must take at least this share of its content words from what the user said.
GROUNDED_SHARE = 0.5


def _stems(text: str) -> list[str]:
    words = re.findall(r"\w+", text.casefold())
    return [w[:5] for w in words if len(w) >= 3 and w not in _STOPWORDS]


def grounded(fact: str, said: str, *, share: float = GROUNDED_SHARE) -> bool:
    """Whether `fact` is about what the user said: at least `share` of its content words (by
    their first five letters, so "hiked" meets "hikes") occur in `said`. A fact with none of
    its words in the exchange is the model's invention (a small model copies examples,
    invents details, or answers the user's question instead of noting a fact)."""
    stems = _stems(fact)
    if not stems:
        return False
    heard = set(_stems(said))
    return sum(stem in heard for stem in stems) >= share * len(stems)


def _about(text: str, said: str) -> bool:
    """At least one content word of `text` is in `said`."""
    return grounded(text, said, share=1e-9)


def plan(ops: list[_Op], facts: list[str], said: str) -> list[Planned]:
    """Operations as a plan over fact texts, kept only when they follow from `said` (the
    user's messages): a fact written must be about it (a word of it) and made of its words or
    of the known facts' (`grounded`: a correction restates the fact it corrects), and a fact
    deleted must be about it too (the user talked about it), a fact updated about it or about
    its replacement. An operation naming a
    line that does not exist is dropped (a small model's miscount must not edit another
    fact); an added fact too long for a line is archived instead; an update with no text is a
    delete."""
    known = said + "\n" + "\n".join(facts)
    planned: list[Planned] = []
    for op in ops:
        fact = one_line(op.fact)
        if fact and not (_about(fact, said) and grounded(fact, known)):
            continue
        if op.op in ("update", "delete"):
            if not 1 <= op.line <= len(facts):
                continue
            old = facts[op.line - 1]
            # The user talked about the old fact, or the update restates it (a word in common:
            # "They live in Porto." for "They live in Lisbon." after "we moved to Porto", which
            # names neither the old city nor living). A delete has only the first.
            if not (_about(old, said) or (fact and op.op == "update" and _about(old, fact))):
                continue
            if op.op == "delete" or not fact:
                planned.append(Planned("delete", old, None))
            elif len(fact) > MAX_FACT_CHARS:
                planned.append(Planned("delete", old, None))
                planned.append(Planned("archive", None, fact[:MAX_ARCHIVE_CHARS]))
            else:
                planned.append(Planned("update", old, fact))
        elif not fact:
            continue
        elif op.op == "archive" or len(fact) > MAX_FACT_CHARS:
            planned.append(Planned("archive", None, op.fact.strip()[:MAX_ARCHIVE_CHARS]))
        else:
            planned.append(Planned("add", None, fact))
    return planned


@dataclass(frozen=True)
class Change:
    op: Literal["add", "update", "delete", "archive", "condense"]
    before: str | None
    after: str | None


@dataclass(frozen=True)
class Applied:
    facts: list[str]
    # In order; `archive` (after = the text) and `condense` (before = the fact moved) are
    # what goes to archival memory.
    changes: list[Change]


def _key(fact: str) -> str:
    return re.sub(r"[\W_]+", " ", fact.casefold()).strip()


def apply(facts: list[str], planned: list[Planned], *, limit: int) -> Applied:
    """The plan applied to `facts` (the block as it is now). Updates and deletes find their
    fact by text: one that is gone (edited meanwhile) is skipped, never guessed. An added
    fact already there is not added twice. When the block would pass `limit` characters,
    the oldest facts (top lines; adds go to the bottom) move to archival memory until it
    fits: condensed, not lost."""
    lines = list(facts)
    changes: list[Change] = []
    archived: set[str] = set()
    for item in planned:
        if item.op == "archive":
            assert item.new is not None
            if _key(item.new) not in archived:  # a model repeating itself stores it once
                archived.add(_key(item.new))
                changes.append(Change("archive", None, item.new))
            continue
        known = {_key(line): i for i, line in enumerate(lines)}
        if item.op == "add":
            assert item.new is not None
            if _key(item.new) in known:
                continue
            lines.append(item.new)
            changes.append(Change("add", None, item.new))
            continue
        assert item.old is not None
        index = known.get(_key(item.old))
        if index is None:
            continue  # that fact changed or went since the model read it
        if item.op == "delete":
            changes.append(Change("delete", lines.pop(index), None))
        else:
            assert item.new is not None
            if _key(item.new) == _key(lines[index]):
                continue
            duplicate = known.get(_key(item.new))
            before = lines[index]
            if duplicate is not None:  # the new value is already a line: drop the old one
                lines.pop(index)
            else:
                lines[index] = item.new
            changes.append(Change("update", before, item.new))
    while lines and len("\n".join(lines)) > limit:
        changes.append(Change("condense", lines.pop(0), None))
    return Applied(lines, changes)


def answer_text(answer: dict[str, Any]) -> str:
    choices = answer.get("choices") or [{}]
    message = choices[0].get("message") or {}
    return str(message.get("content") or "")
