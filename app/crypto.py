"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with a key derived from ENCRYPTION_KEY.

ENCRYPTION_KEY is any long random string, not necessarily a Fernet key, so the Fernet key is
derived with HKDF-SHA256 under a fixed purpose label: the same setting could later derive keys
for other purposes without them being interchangeable.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

_PURPOSE = b"agentmem/secrets-at-rest/v1"


class DecryptionError(Exception):
    """The ciphertext was not made with this key (rotated key, or tampered data)."""


def derive_fernet_key(secret: str) -> bytes:
    if not secret:
        raise ValueError("ENCRYPTION_KEY is empty")
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(
        secret.encode("utf-8")
    )
    return base64.urlsafe_b64encode(raw)


class SecretBox:
    """Encrypts short secrets (virtual keys) to text that fits a `text` column."""

    def __init__(self, secret: SecretStr | str) -> None:
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        self._fernet = Fernet(derive_fernet_key(value))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError) as exc:
            raise DecryptionError("cannot decrypt with the configured ENCRYPTION_KEY") from exc

    def __repr__(self) -> str:  # never show key material
        return "SecretBox(<hidden>)"
