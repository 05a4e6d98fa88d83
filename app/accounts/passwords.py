"""The rules a new password must meet (registration, whichever identity provider).

Checked in the request schema, so a password Supabase would be sent is refused the same way as
one the built-in identity would hash. Login does not apply them: an account made before a rule
existed must still be able to sign in.

- At least MIN_PASSWORD characters.
- At most MAX_PASSWORD_BYTES bytes of UTF-8: Supabase Auth hashes with bcrypt, which ignores
  everything past 72 bytes (supabase/auth#1101), so a longer password would be weaker than it
  looks; the built-in argon2id has no such limit, but one rule for both lets an account move
  between providers, and it bounds the hashing work one request can ask for.
- No control characters (NUL, tabs, line breaks, ...) and no lone surrogates: nobody types
  them, and they break the stores and tools a password passes through.
- Not only spaces.
- Not one of the common passwords in `common_passwords.txt` (compared without case and
  surrounding spaces): the list is the first thing a guesser tries. Its origin and licence
  are in `common_passwords.LICENSE`.
"""

from __future__ import annotations

import unicodedata
from functools import cache
from pathlib import Path

from pydantic_core import PydanticCustomError

MIN_PASSWORD = 8
MAX_PASSWORD_BYTES = 72

COMMON_PASSWORDS_FILE = Path(__file__).with_name("common_passwords.txt")

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs"})


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list, read once per process (the composition root reads it at startup, so
    a missing file stops the app there and not at the first registration). Cached at module
    level on purpose: it is constant data, the same for every app in the process."""
    with COMMON_PASSWORDS_FILE.open(encoding="utf-8") as lines:
        return frozenset(word for line in lines if (word := line.strip().lower()))


def _refuse(code: str, message: str) -> PydanticCustomError:
    # A custom error keeps the message as written (no "Value error, " prefix) in the 422.
    return PydanticCustomError(code, message)


def check_new_password(password: str) -> str:
    """The password unchanged, or a validation error that says what to change."""
    if any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in password):
        raise _refuse("password_control_characters", "password must not contain control characters")
    if len(password) < MIN_PASSWORD:
        raise _refuse(
            "password_too_short", f"password must have at least {MIN_PASSWORD} characters"
        )
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise _refuse(
            "password_too_long", f"password must be at most {MAX_PASSWORD_BYTES} bytes of UTF-8"
        )
    if not password.strip():
        raise _refuse("password_blank", "password must not be only spaces")
    if password.strip().lower() in common_passwords():
        raise _refuse(
            "password_too_common",
            "this password is one of the most common passwords; choose another",
        )
    return password
