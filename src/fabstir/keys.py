"""Ed25519 key files: created with 0600 permissions, optionally encrypted with a password.

A plain key file holds the 32-byte seed as hex. With a password, it holds
``scrypt-secretbox:<salt hex>:<box hex>``: the seed sealed with XSalsa20-Poly1305
under a key derived from the password with scrypt. Keys are never logged;
errors name the file, not its contents.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nacl import pwhash, secret, utils
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey

from fabstir.errors import ConfigError

__all__ = ["load_or_create_signing_key", "load_signing_key", "save_signing_key"]

_PREFIX = "scrypt-secretbox"


def _derive(password: str, salt: bytes) -> bytes:
    return bytes(pwhash.scrypt.kdf(secret.SecretBox.KEY_SIZE, password.encode("utf-8"), salt,
                                   opslimit=pwhash.scrypt.OPSLIMIT_INTERACTIVE,
                                   memlimit=pwhash.scrypt.MEMLIMIT_INTERACTIVE))


def save_signing_key(key: SigningKey, path: str | os.PathLike[str], password: str | None = None) -> Path:
    """Write ``key`` to ``path`` (mode 0600, created atomically); refuses to overwrite."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    seed = bytes(key)
    if password:
        salt = utils.random(pwhash.scrypt.SALTBYTES)
        box = secret.SecretBox(_derive(password, salt)).encrypt(seed)
        text = f"{_PREFIX}:{salt.hex()}:{bytes(box).hex()}\n"
    else:
        text = seed.hex() + "\n"
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"key file {target} already exists") from None
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(text)
    return target


def load_signing_key(path: str | os.PathLike[str], password: str | None = None) -> SigningKey:
    """Read a key file written by :func:`save_signing_key`.

    Raises:
        ConfigError: missing file, readable by others, wrong password, or not a key file.
    """
    source = Path(path)
    try:
        mode = source.stat().st_mode
        text = source.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read key file {source}: {type(exc).__name__}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"key file {source} is accessible by other users; chmod 600 it")
    try:
        if text.startswith(_PREFIX + ":"):
            if not password:
                raise ConfigError(f"key file {source} is encrypted: give its password")
            _, salt, box = text.split(":")
            seed = secret.SecretBox(_derive(password, bytes.fromhex(salt))).decrypt(bytes.fromhex(box))
        else:
            seed = bytes.fromhex(text)
        return SigningKey(seed)
    except (ValueError, CryptoError):
        raise ConfigError(f"key file {source} is not a valid key (or the password is wrong)") from None


def load_or_create_signing_key(path: str | os.PathLike[str], password: str | None = None) -> SigningKey:
    """Load the key at ``path``, creating a new random one there first if it does not exist."""
    if not Path(path).exists():
        save_signing_key(SigningKey.generate(), path, password)
    return load_signing_key(path, password)
