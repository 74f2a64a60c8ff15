"""Encryption of everything private at rest in Redis (conversation state, queued messages,
replies, numbers): Fernet, i.e. AES-128-CBC with an HMAC, keyed by STATE_ENCRYPTION_KEY.

STATE_ENCRYPTION_KEY may list several keys (comma-separated): the first encrypts, every one
decrypts (MultiFernet), so a key is rotated without losing what was written under the old one."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from wacoder.settings import Settings

__all__ = ["InvalidToken", "StateCipher"]


class StateCipher:
    def __init__(self, keys: str) -> None:
        self._fernet = MultiFernet([Fernet(k.strip()) for k in keys.split(",") if k.strip()])

    @classmethod
    def from_settings(cls, settings: Settings) -> StateCipher:
        return cls(settings.secret("state_encryption_key"))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        """Raises InvalidToken when the data was not written with this key."""
        return self._fernet.decrypt(token.encode()).decode()
