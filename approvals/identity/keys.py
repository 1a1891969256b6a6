"""Credentials: API keys (shown once, stored as SHA-256) and Standard Webhooks signing secrets."""

from __future__ import annotations

import base64
import hashlib
import secrets

AGENT_KEY_PREFIX = "apk_"
AUDITOR_KEY_PREFIX = "apa_"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def new_api_key(prefix: str) -> str:
    """A key with a recognisable prefix and 256 bits from the OS CSPRNG."""
    return prefix + secrets.token_urlsafe(32)


MAX_KEY_LENGTH = 200


def is_well_formed_key(key: str) -> bool:
    """Could this be a key we issued? Ours are short printable ASCII (a prefix and URL-safe base64)."""
    return 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()


def hash_api_key(key: str) -> str:
    """Keys carry 256 random bits, so a plain SHA-256 (no salt, no stretching) cannot be brute-forced.

    surrogatepass: a presented key decoded from undecodable header bytes holds lone surrogates; it
    must hash (to something no issued key hashes to) rather than raise.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(key: str) -> str:
    """Enough of a key to recognise it in a list without revealing it."""
    return key[:12]


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and base64 of 32 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_id(prefix: str) -> str:
    """An opaque identifier that reveals nothing and cannot be guessed."""
    return prefix + secrets.token_hex(12)
