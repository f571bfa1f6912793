"""Agent API keys: generated once, shown once, stored as a SHA-256 hash with a public lookup prefix.

Keys carry 256 bits of randomness, so a fast hash is as strong as a slow one here; the prefix lets the API find
the row without scanning, and the comparison is constant-time so timing reveals nothing about the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_SCHEME = "dva"
PREFIX_LENGTH = 10
_DUMMY_HASH = hashlib.sha256(b"devart-dummy-key").hexdigest()


def generate_key() -> tuple[str, str, str]:
    """Return ``(key, prefix, hash)``; only the prefix and hash are ever stored."""
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str | None:
    """The lookup prefix of a well-formed key, or None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != PREFIX_LENGTH:
        return None
    return parts[1]


def verify(key: str, stored_hash: str | None) -> bool:
    """Constant-time check; an unknown prefix still does the same work against a dummy hash."""
    return hmac.compare_digest(hash_key(key), stored_hash or _DUMMY_HASH) and stored_hash is not None


TOKEN_SCHEME = "dvt"
#: A first administrator's token is guessed by nobody: at least this many characters (``devart up`` makes 43).
MIN_TOKEN_LENGTH = 24
#: Characters of a personal token shown in listings (the scheme and a few random ones), enough to tell them apart.
TOKEN_DISPLAY = 12


def generate_token() -> tuple[str, str, str]:
    """A personal API token: ``(token, display prefix, hash)``; only the prefix and the hash are ever stored.

    Tokens are found by their hash (a unique index): with 256 random bits there is nothing to learn from how long
    a lookup of a wrong one takes.
    """
    token = f"{TOKEN_SCHEME}_{secrets.token_urlsafe(32)}"
    return token, token[:TOKEN_DISPLAY], hash_key(token)
