"""The user's storage key and everything derived from it (HKDF-SHA256, one ``info`` string per purpose).

::

    root          = HKDF(ikm=secret, salt="fabstir-storage-v1", info="fabstir/storage/v1/root/<secret|wallet>")
    conversation  = HKDF(ikm=root, salt=<32 random bytes, one per conversation>, info=".../conversation")
    name          = HMAC-SHA256(HKDF(root, info=".../name"), session_id)          the pointer's public name
    pointer key   = Ed25519 seed HKDF(root, info=".../pointer/" + name)           signs that one pointer

Everything stored is sealed with XChaCha20-Poly1305 under a conversation key (see ``docs/storage.md``).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey

from fabstir.errors import StorageError

__all__ = ["NONCE_SIZE", "SALT_SIZE", "StorageKey", "new_salt", "open_sealed", "seal"]

SALT_SIZE = 32
NONCE_SIZE = 24
_INFO = b"fabstir/storage/v1/"
_ROOT_SALT = b"fabstir-storage-v1"


def _hkdf(ikm: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO + info).derive(ikm)


class StorageKey:
    """A user's storage key: build it with :meth:`from_secret` or :meth:`from_wallet_key`; never stored."""

    def __init__(self, root: bytes) -> None:
        self._root = root
        self._name_key = _hkdf(root, b"name")

    def __repr__(self) -> str:
        return "StorageKey(<hidden>)"

    @classmethod
    def from_secret(cls, secret: bytes) -> StorageKey:
        """From a random user secret of at least 32 bytes (e.g. ``os.urandom(32)`` kept in a key file)."""
        if len(secret) < 32:
            raise StorageError("a storage secret needs at least 32 bytes", code="STORAGE_KEY_INVALID")
        return cls(_hkdf(secret, b"root/secret", _ROOT_SALT))

    @classmethod
    def from_wallet_key(cls, private_key: bytes | str) -> StorageKey:
        """From a wallet's 32-byte private key (bytes or hex, ``0x`` optional); the key itself, not a signature."""
        raw = bytes.fromhex(private_key.removeprefix("0x")) if isinstance(private_key, str) else private_key
        if len(raw) != 32:
            raise StorageError("a wallet private key has 32 bytes", code="STORAGE_KEY_INVALID")
        return cls(_hkdf(raw, b"root/wallet", _ROOT_SALT))

    def conversation_key(self, salt: bytes) -> bytes:
        """The key that seals one conversation, from its random salt."""
        return _hkdf(self._root, b"conversation", salt)

    def name(self, session_id: str) -> str:
        """The pointer name of a conversation: an HMAC of its id, so storage never sees the id."""
        return hmac.new(self._name_key, session_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def pointer_key(self, name: str) -> SigningKey:
        """The Ed25519 key that signs the pointer called ``name`` (one per pointer: pointers are unlinkable)."""
        return SigningKey(_hkdf(self._root, b"pointer/" + name.encode("ascii")))


def new_salt() -> bytes:
    """A fresh per-conversation salt."""
    return os.urandom(SALT_SIZE)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``nonce || ciphertext`` under XChaCha20-Poly1305 with a random 24-byte nonce."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output; ``STORAGE_TAMPERED`` if it was altered (or sealed elsewhere)."""
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(sealed[NONCE_SIZE:], aad, sealed[:NONCE_SIZE], key)
    except (CryptoError, ValueError) as exc:
        raise StorageError("stored data failed authentication", code="STORAGE_TAMPERED") from exc
