"""Encryption of stored secrets (broker OAuth tokens) with MultiFernet.

``TOKEN_ENCRYPTION_KEY`` lists one or more Fernet keys: the first encrypts, all decrypt, so a key
can be rotated in by putting the new key first; ``python -m app.cli rotate-token-keys`` then
re-encrypts every stored token with the newest key, after which the old key can be removed.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class TokenCipher:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one Fernet key is required")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        """Raises ``InvalidToken`` if no configured key opens it (or it was tampered with)."""
        return self._fernet.decrypt(ciphertext.encode()).decode()

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt with the first (newest) key."""
        return self._fernet.rotate(ciphertext.encode()).decode()


__all__ = ["InvalidToken", "TokenCipher"]
