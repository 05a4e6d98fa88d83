"""The memory benchmark's script: what a person tells their agent over several sessions, and
what they ask afterwards.

Facts are planted among filler chat, some are corrected later (moved house, changed job,
a new pet's name), and a few are long enough that they belong in archival memory rather than
the human block. Every planting message carries its annotation (which fact it states and
whether that replaces an earlier value): the benchmark's scripted extractor answers the memory
pass from these annotations, and the questions' expected keywords are the latest values.

Data only: no I/O, no imports beyond dataclasses, so a test can check its own consistency.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Statement:
    """One fact a user message states. `text` is the fact as a memory line (third person);
    `replaces` is True when it corrects an earlier value of the same key."""

    key: str
    text: str
    replaces: bool = False
    long: bool = False  # a longer fact: archival memory rather than a block line


@dataclass(frozen=True)
class Turn:
    message: str
    statements: tuple[Statement, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Question:
    key: str
    text: str
    # The answer contains the fact when it contains every keyword of one of these alternatives
    # (case-insensitive); the first alternative is the canonical one.
    expected: tuple[tuple[str, ...], ...]


S = Statement
T = Turn

FILLER: tuple[str, ...] = (
    "Can you give me a quick tip for staying focused in the afternoon?",
    "What is a good way to start learning to cook with few ingredients?",
    "Tell me something interesting about octopuses.",
    "How long should I boil an egg for a soft yolk?",
    "What's a simple stretching routine for after sitting all day?",
    "Any ideas for a rainy Sunday afternoon?",
    "How do I keep basil alive on a windowsill?",
    "Explain in two sentences why the sky is blue.",
    "What's the difference between baking soda and baking powder?",
    "Suggest a short book I could finish in a weekend.",
    "How can I make my mornings less rushed?",
    "What are some good habits for saving money each month?",
    "Give me a fun fact about the moon.",
    "How often should I water a cactus?",
    "What should I pack for a two-day hiking trip?",
    "Can you recommend a board game for four people?",
    "How do I remove a coffee stain from a shirt?",
    "What's a polite way to decline a meeting invitation?",
    "Why do cats purr?",
    "How do I make a simple tomato sauce?",
)


def _filler(start: int, count: int) -> tuple[Turn, ...]:
    return tuple(T(FILLER[(start + i) % len(FILLER)]) for i in range(count))


# Sessions: each is one sitting; the benchmark may start a new conversation per session.
SESSIONS: tuple[tuple[Turn, ...], ...] = (
    (
        T(
            "Hi! My name is Dana Okafor and I live in Lisbon.",
            (S("name", "Their name is Dana Okafor."), S("city", "They live in Lisbon.")),
        ),
        *_filler(0, 2),
        T(
            "I work as a nurse at a children's hospital.",
            (S("job", "They work as a nurse at a children's hospital."),),
        ),
        T(
            "My birthday is on the 14th of March.",
            (S("birthday", "Their birthday is on 14 March."),),
        ),
        *_filler(2, 2),
        T(
            "I have a dog called Biscuit, a beagle.",
            (S("dog", "They have a beagle called Biscuit."),),
        ),
        T(
            "I'm vegetarian, so no meat suggestions please.",
            (S("diet", "They are vegetarian."),),
        ),
        *_filler(4, 2),
    ),
    (
        T(
            "My sister Amara is getting married in June.",
            (S("sister", "Their sister is called Amara; she is getting married in June."),),
        ),
        T(
            "I play the cello in a community orchestra on Thursdays.",
            (S("instrument", "They play the cello in a community orchestra on Thursdays."),),
        ),
        *_filler(6, 3),
        T(
            "Coffee is my thing, always a flat white, never tea.",
            (S("drink", "Their favourite drink is a flat white."),),
        ),
        T(
            "I'm allergic to peanuts, quite seriously.",
            (S("allergy", "They are seriously allergic to peanuts."),),
        ),
        T(
            "My partner's name is Tomás, he's a carpenter.",
            (S("partner", "Their partner is Tomás, a carpenter."),),
        ),
        *_filler(9, 2),
        T(
            "My favourite author is Ursula K. Le Guin.",
            (S("author", "Their favourite author is Ursula K. Le Guin."),),
        ),
    ),
    (
        T(
            "Big news: we moved from Lisbon to Porto last week!",
            (S("city", "They live in Porto (moved from Lisbon).", replaces=True),),
        ),
        *_filler(11, 2),
        T(
            "I drive an old green Fiat Panda.",
            (S("car", "They drive an old green Fiat Panda."),),
        ),
        T(
            "We also adopted a cat, her name is Pixel.",
            (S("cat", "They have a cat called Pixel."),),
        ),
        T(
            "My daughter Leila just started primary school; she is six.",
            (S("child", "Their daughter Leila is six and started primary school."),),
        ),
        *_filler(13, 3),
        T(
            "I'm learning Japanese, about an hour every evening.",
            (S("language", "They are learning Japanese."),),
        ),
        T(
            "Our wedding anniversary is on the 2nd of September.",
            (S("anniversary", "Their wedding anniversary is on 2 September."),),
        ),
    ),
    (
        T(
            "I left the hospital; I now work as a school nurse.",
            (S("job", "They now work as a school nurse (left the hospital).", replaces=True),),
        ),
        *_filler(16, 2),
        T(
            "Actually, my cello group moved to Tuesdays.",
            (
                S(
                    "instrument",
                    "They play the cello in a community orchestra on Tuesdays.",
                    replaces=True,
                ),
            ),
        ),
        T(
            "My favourite holiday memory: the summer we rented a tiny cabin near Gerês, hiked to "
            "a waterfall every morning, and Tomás burned the bread every single night.",
            (
                S(
                    "holiday",
                    "Favourite holiday memory: a summer in a tiny cabin near Gerês, hiking to a "
                    "waterfall every morning while Tomás burned the bread every night.",
                    long=True,
                ),
            ),
        ),
        *_filler(18, 2),
        T(
            "I switched: I drink green tea now, my doctor said less coffee.",
            (S("drink", "Their favourite drink is now green tea (not coffee).", replaces=True),),
        ),
        T(
            "I run 5 km every Saturday morning along the Douro.",
            (S("exercise", "They run 5 km every Saturday morning along the Douro."),),
        ),
        T(
            "My mother Grace lives in Manchester and visits at Christmas.",
            (S("mother", "Their mother Grace lives in Manchester and visits at Christmas."),),
        ),
    ),
    (
        *_filler(0, 2),
        T(
            "We sold the Panda and bought a blue electric Renault Zoe.",
            (S("car", "They drive a blue electric Renault Zoe (sold the Panda).", replaces=True),),
        ),
        T(
            "The research project I'm proudest of was a study on how school nurses spot "
            "asthma early; we surveyed 340 schools and it changed the district's inhaler policy.",
            (
                S(
                    "project",
                    "Proudest project: a study of how school nurses spot asthma early, surveying "
                    "340 schools; it changed the district's inhaler policy.",
                    long=True,
                ),
            ),
        ),
        *_filler(2, 2),
        T(
            "Leila's birthday is the 30th of November.",
            (S("child_birthday", "Their daughter Leila's birthday is on 30 November."),),
        ),
        T(
            "I stopped being vegetarian, I eat fish now, so pescatarian.",
            (S("diet", "They are pescatarian now (were vegetarian).", replaces=True),),
        ),
        *_filler(4, 3),
    ),
)

QUESTIONS: tuple[Question, ...] = (
    Question("name", "What is my full name?", (("dana", "okafor"),)),
    Question("city", "Which city do I live in now?", (("porto",),)),
    Question("job", "What is my job now?", (("school", "nurse"),)),
    Question("birthday", "When is my birthday?", (("14", "march"), ("march", "14"))),
    Question("dog", "What is my dog's name?", (("biscuit",),)),
    Question("diet", "What do I eat, am I vegetarian?", (("pescatarian",),)),
    Question("sister", "What is my sister's name?", (("amara",),)),
    Question("instrument", "Which day is my orchestra practice?", (("tuesday",),)),
    Question("drink", "What's my favourite drink these days?", (("green tea",),)),
    Question("allergy", "What am I allergic to?", (("peanut",),)),
    Question("partner", "What is my partner's name?", (("tomás",), ("tomas",))),
    Question("author", "Who is my favourite author?", (("le guin",),)),
    Question("car", "What car do I drive?", (("zoe",),)),
    Question("cat", "What's my cat called?", (("pixel",),)),
    Question("child", "What is my daughter's name?", (("leila",),)),
    Question("language", "Which language am I learning?", (("japanese",),)),
    Question("anniversary", "When is our wedding anniversary?", (("2", "september"),)),
    Question("holiday", "Where was the cabin of my favourite holiday?", (("gerês",), ("geres",))),
    Question("exercise", "How far do I run on Saturdays?", (("5 km",), ("5km",))),
    Question("mother", "Where does my mother live?", (("manchester",),)),
    Question("project", "How many schools did my asthma study survey?", (("340",),)),
    Question("child_birthday", "When is my daughter's birthday?", (("30", "november"),)),
)

CORRECTED_KEYS: frozenset[str] = frozenset(
    s.key for session in SESSIONS for turn in session for s in turn.statements if s.replaces
)


def latest_statements() -> dict[str, Statement]:
    """Each fact's latest statement, in the order they were first told."""
    latest: dict[str, Statement] = {}
    for session in SESSIONS:
        for turn in session:
            for statement in turn.statements:
                latest[statement.key] = statement
    return latest
