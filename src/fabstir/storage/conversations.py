"""``ConversationStore``: encrypted, append-only conversations over any :class:`Backend`.

Each record is sealed under its conversation's key and stored as a blob; the conversation's pointer (named by
an HMAC of the session id, signed by a key derived for that name) holds ``version || salt || sealed head``,
where the head lists the session id and the record blobs in order. Deleting writes an empty pointer (a
tombstone) with the next ``seq``, so the deleted conversation's older pointer cannot come back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fabstir.errors import StorageError
from fabstir.storage.backend import Backend, Pointer, blob_id, sign_pointer, verify_pointer
from fabstir.storage.export import ExportFormat, export_conversation
from fabstir.storage.keys import SALT_SIZE, StorageKey, new_salt, open_sealed, seal
from fabstir.storage.records import AssistantChunk, Conversation, Receipt, Record, UserMessage, decode, encode, fold

__all__ = ["KEY_CHECK", "ConversationStore"]

KEY_CHECK = "key-check"
"""The pointer that tells a store opened with another key (``STORAGE_KEY_INVALID``): one user key per store."""

_VERSION = b"\x01"
_HEAD_AAD = b"fabstir/storage/v1/head\x00"
_RECORD_AAD = b"fabstir/storage/v1/record\x00"
_RETRIES = 5


@dataclass(frozen=True)
class _Head:
    seq: int
    salt: bytes
    session_id: str
    records: tuple[str, ...]


class ConversationStore:
    """A user's conversations; open with :meth:`open`. Blocking: call it from a thread in async code."""

    def __init__(self, backend: Backend, key: StorageKey) -> None:
        self.backend = backend
        self._key = key

    @classmethod
    def open(cls, backend: Backend, key: StorageKey) -> ConversationStore:
        """A store over ``backend``; ``STORAGE_KEY_INVALID`` if it already holds another key's conversations."""
        store = cls(backend, key)
        signer = key.pointer_key(KEY_CHECK)
        found = backend.get_pointer(KEY_CHECK)
        if found is None:
            backend.set_pointer(sign_pointer(signer, KEY_CHECK, 1, b"fabstir storage v1"))
        elif found.owner != bytes(signer.verify_key):
            raise StorageError("this storage belongs to another key", code="STORAGE_KEY_INVALID")
        return store

    def add_user_message(self, session_id: str, text: str, *, model: str = "", host: str = "") -> None:
        """Store the user's prompt (before it is sent)."""
        self.append(session_id, UserMessage(text, model, host))

    def add_answer_chunk(self, session_id: str, text: str, *, done: bool = False) -> None:
        """Store a batch of streamed answer text; ``done=True`` on the last one."""
        self.append(session_id, AssistantChunk(text, done))

    def add_receipt(self, session_id: str, receipt: dict[str, object]) -> None:
        """Store a host's receipt."""
        self.append(session_id, Receipt(receipt))

    def append(self, session_id: str, record: Record) -> None:
        """Seal ``record``, store it, and move the conversation's pointer past it (retried on a race)."""
        name = self._key.name(session_id)
        for _ in range(_RETRIES):
            head, seq = self._head(name)
            salt = head.salt if head else new_salt()
            key = self._key.conversation_key(salt)
            blob = self.backend.put(seal(key, encode(record), _RECORD_AAD + name.encode()))
            records = (head.records if head else ()) + (blob,)
            try:
                self._write(name, seq + 1, _Head(seq + 1, salt, session_id, records))
                return
            except StorageError as exc:
                if exc.code != "STORAGE_STALE_POINTER":
                    raise
        raise StorageError(f"conversation {session_id}: too many concurrent writers", code="STORAGE_STALE_POINTER")

    def load(self, session_id: str) -> Conversation:
        """The conversation in order; ``STORAGE_NOT_FOUND`` if there is none under this key."""
        head = self._existing(session_id)
        key = self._key.conversation_key(head.salt)
        aad = _RECORD_AAD + self._key.name(session_id).encode()
        return fold(head.session_id, (decode(open_sealed(key, self._blob(b), aad)) for b in head.records))

    def list_conversations(self) -> list[str]:
        """The session ids of this key's conversations (other keys' pointers are skipped)."""
        ids = []
        for name in self.backend.list_pointers():
            pointer = self.backend.get_pointer(name)
            if name == KEY_CHECK or pointer is None or pointer.owner != self._owner(name):
                continue
            head, _ = self._head(name)
            if head is not None:
                ids.append(head.session_id)
        return sorted(ids)

    def delete(self, session_id: str) -> None:
        """Remove the conversation: a tombstone pointer first, then its blobs."""
        head = self._existing(session_id)
        name = self._key.name(session_id)
        self.backend.set_pointer(sign_pointer(self._key.pointer_key(name), name, head.seq + 1, b""))
        for blob in head.records:
            self.backend.delete(blob)

    def export(self, session_id: str, format: ExportFormat) -> str:
        """The conversation as ``json``, ``markdown`` or OpenAI-style ``messages`` (a JSON array)."""
        return export_conversation(self.load(session_id), format)

    def snapshot(self, session_id: str) -> str:
        """The conversation's content address now: its pointer's data (``0x01 || salt || sealed head``, the
        head listing the record blobs) stored as an immutable blob; returns that blob's id (SHA-256 hex)."""
        self._existing(session_id)
        pointer = self.backend.get_pointer(self._key.name(session_id))
        assert pointer is not None
        return self.backend.put(pointer.data)

    def _owner(self, name: str) -> bytes:
        return bytes(self._key.pointer_key(name).verify_key)

    def _existing(self, session_id: str) -> _Head:
        head, _ = self._head(self._key.name(session_id))
        if head is None:
            raise StorageError(f"no conversation {session_id}", code="STORAGE_NOT_FOUND")
        return head

    def _blob(self, blob: str) -> bytes:
        data = self.backend.get(blob)
        if blob_id(data) != blob:
            raise StorageError(f"blob {blob} does not match its hash", code="STORAGE_TAMPERED")
        return data

    def _head(self, name: str) -> tuple[_Head | None, int]:
        """The current head (``None`` if absent or deleted) and the pointer's ``seq`` (0 if absent)."""
        pointer = self.backend.get_pointer(name)
        if pointer is None:
            return None, 0
        self._check(pointer)
        if not pointer.data:
            return None, pointer.seq
        if pointer.data[:1] != _VERSION:
            raise StorageError(f"pointer {name} has an unknown version", code="STORAGE_BAD_FORMAT")
        salt = pointer.data[1:1 + SALT_SIZE]
        plain = open_sealed(self._key.conversation_key(salt), pointer.data[1 + SALT_SIZE:], _HEAD_AAD + name.encode())
        try:
            body = json.loads(plain)
            head = _Head(pointer.seq, salt, str(body["session_id"]), tuple(str(r) for r in body["records"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"pointer {name} has an unreadable head", code="STORAGE_BAD_FORMAT") from exc
        return head, pointer.seq

    def _check(self, pointer: Pointer) -> None:
        if pointer.owner != self._owner(pointer.name):
            raise StorageError(f"pointer {pointer.name} was not written by this key", code="STORAGE_KEY_INVALID")
        verify_pointer(pointer)

    def _write(self, name: str, seq: int, head: _Head) -> None:
        body = json.dumps({"session_id": head.session_id, "records": list(head.records)}).encode()
        sealed = seal(self._key.conversation_key(head.salt), body, _HEAD_AAD + name.encode())
        self.backend.set_pointer(sign_pointer(self._key.pointer_key(name), name, seq, _VERSION + head.salt + sealed))
