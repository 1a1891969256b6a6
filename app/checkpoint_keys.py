"""The Ed25519 key that signs audit checkpoints: from a setting, or a file generated on first start."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.config import Settings


class CheckpointKeyError(Exception):
    """The configured key cannot be used; the message names the setting."""


@dataclass(frozen=True)
class CheckpointKey:
    private: Ed25519PrivateKey

    @functools.cached_property
    def public(self) -> Ed25519PublicKey:
        # Built once: verification checks one signature per checkpoint, a hundred thousand a year.
        return self.private.public_key()

    @property
    def public_bytes(self) -> bytes:
        return self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        """A fingerprint of the public key, stored with each checkpoint."""
        return hashlib.sha256(self.public_bytes).hexdigest()[:16]

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_bytes).decode()

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self.private.sign(body)).decode()

    @functools.cached_property
    def _verifier(self) -> nacl.signing.VerifyKey:
        # libsodium checks an Ed25519 signature in half the time OpenSSL takes (see pyproject.toml).
        return nacl.signing.VerifyKey(self.public_bytes)

    def verify(self, body: bytes, signature: str) -> bool:
        try:
            self._verifier.verify(body, base64.b64decode(signature))
            return True
        except (nacl.exceptions.BadSignatureError, ValueError):  # ValueError: not base64, wrong length
            return False


def _from_seed(seed_b64: str, source: str) -> CheckpointKey:
    try:
        seed = base64.b64decode(seed_b64.strip(), validate=True)
        return CheckpointKey(Ed25519PrivateKey.from_private_bytes(seed))
    except ValueError:
        raise CheckpointKeyError(f"{source}: must be base64 of a 32-byte Ed25519 private key") from None


def load_checkpoint_key(settings: Settings) -> CheckpointKey:
    """APPROVALS_CHECKPOINT_KEY if set; else the key file, created (mode 0600) when missing."""
    if settings.checkpoint_key is not None:
        return _from_seed(settings.checkpoint_key.get_secret_value(), "APPROVALS_CHECKPOINT_KEY")
    path = Path(settings.checkpoint_key_file)
    try:
        if path.exists():
            return _from_seed(path.read_text(), f"APPROVALS_CHECKPOINT_KEY_FILE ({path})")
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(seed).decode() + "\n")
    except OSError as exc:
        raise CheckpointKeyError(
            f"APPROVALS_CHECKPOINT_KEY_FILE ({path}): cannot read or create it: {exc.strerror}"
        ) from None
    return CheckpointKey(Ed25519PrivateKey.from_private_bytes(seed))
