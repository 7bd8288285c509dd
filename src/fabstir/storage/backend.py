"""The storage interface: immutable blobs named by their hash, and signed mutable pointers.

A backend stores bytes it cannot read. Blobs are put once and named by the SHA-256 of their bytes. A pointer
is the one mutable record per conversation: ``(name, owner, seq, data, signature)``, signed with the Ed25519
key ``owner``; a backend accepts a new pointer only with a valid signature, the same owner as the one it
replaces, and a higher ``seq`` (so an older pointer can never replace a newer one).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from fabstir.errors import StorageError

__all__ = ["Backend", "Pointer", "blob_id", "check_replaces", "sign_pointer", "verify_pointer"]

_DOMAIN = b"fabstir/storage/v1/pointer\x00"


def blob_id(data: bytes) -> str:
    """The name of a blob: the hex SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class Pointer:
    """A signed mutable record: ``data`` (opaque bytes) at revision ``seq`` under ``name``."""

    name: str
    owner: bytes
    seq: int
    data: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        """What the signature covers: a domain tag, the name, the sequence number and the data."""
        name = self.name.encode("utf-8")
        return _DOMAIN + len(name).to_bytes(2, "big") + name + self.seq.to_bytes(8, "big") + self.data


def sign_pointer(key: SigningKey, name: str, seq: int, data: bytes) -> Pointer:
    """A pointer signed by ``key``."""
    unsigned = Pointer(name, bytes(key.verify_key), seq, data, b"")
    return dataclasses.replace(unsigned, signature=key.sign(unsigned.signed_bytes()).signature)


def verify_pointer(pointer: Pointer) -> None:
    """Raise ``STORAGE_TAMPERED`` unless ``pointer`` is signed by its owner."""
    try:
        VerifyKey(pointer.owner).verify(pointer.signed_bytes(), pointer.signature)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise StorageError(f"pointer {pointer.name} has a bad signature", code="STORAGE_TAMPERED") from exc


def check_replaces(new: Pointer, old: Pointer | None) -> None:
    """The backend's rule for storing ``new`` where ``old`` is: signed, same owner, higher ``seq``."""
    verify_pointer(new)
    if old is None:
        return
    if new.owner != old.owner:
        raise StorageError(f"pointer {new.name} belongs to another key", code="STORAGE_KEY_INVALID")
    if new.seq <= old.seq:
        raise StorageError(f"pointer {new.name}: seq {new.seq} does not follow {old.seq}",
                           code="STORAGE_STALE_POINTER")


class Backend(Protocol):
    """Where encrypted conversations live (SQLite here; S3 and S5 next). Every method is blocking."""

    def put(self, data: bytes) -> str:
        """Store ``data``; return its :func:`blob_id`. Putting the same bytes twice is harmless."""
        ...

    def get(self, blob: str) -> bytes:
        """The bytes of ``blob``; ``STORAGE_NOT_FOUND`` or ``STORAGE_TAMPERED`` (hash mismatch)."""
        ...

    def list_blobs(self) -> list[str]:
        """Every blob id stored."""
        ...

    def delete(self, blob: str) -> None:
        """Remove ``blob`` (no error if it is absent)."""
        ...

    def get_pointer(self, name: str) -> Pointer | None:
        """The current pointer called ``name``, or ``None``."""
        ...

    def set_pointer(self, pointer: Pointer) -> None:
        """Store ``pointer`` atomically if :func:`check_replaces` allows it; raise its error otherwise."""
        ...

    def list_pointers(self) -> list[str]:
        """Every pointer name stored."""
        ...

    def close(self) -> None:
        """Release the backend's resources."""
        ...
