"""Encryption of state at rest (conversation state, queued message text): Fernet, i.e.
AES-128-CBC with an HMAC, keyed by STATE_ENCRYPTION_KEY."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from wacoder.settings import Settings

__all__ = ["InvalidToken", "StateCipher"]


class StateCipher:
    def __init__(self, key: str | bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> StateCipher:
        if settings.state_encryption_key is None:
            # No key means a dev process started by hand; `make run` always provides one.
            raise RuntimeError(
                "STATE_ENCRYPTION_KEY is not set (generate one with `make run` or "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())'`)"
            )
        return cls(settings.state_encryption_key.get_secret_value())

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        """Raises InvalidToken when the data was not written with this key."""
        return self._fernet.decrypt(token.encode()).decode()
