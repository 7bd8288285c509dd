"""Conversation storage: the user's conversations, encrypted on the client, in a backend that cannot read them.

Used by the SDK through ``FabstirSDK(storage=...)`` (``fabstir.sdk.recording``). See ``docs/storage.md`` for
the encryption scheme.

    >>> store = ConversationStore.open(SqliteBackend(), StorageKey.from_secret(secret))
    >>> store.add_user_message("s1", "hi", model="m", host="h")
    >>> store.load("s1").messages
"""

from __future__ import annotations

from fabstir.storage.backend import Backend, Pointer, blob_id, sign_pointer, verify_pointer
from fabstir.storage.conversations import ConversationStore
from fabstir.storage.export import ExportFormat, export_conversation, openai_messages
from fabstir.storage.keys import StorageKey
from fabstir.storage.records import AssistantChunk, Conversation, Message, Receipt, Record, UserMessage
from fabstir.storage.s3 import S3Backend
from fabstir.storage.s5 import S5Backend
from fabstir.storage.sqlite import SqliteBackend, default_path

__all__ = [
    "AssistantChunk",
    "Backend",
    "Conversation",
    "ConversationStore",
    "ExportFormat",
    "Message",
    "Pointer",
    "Receipt",
    "Record",
    "S3Backend",
    "S5Backend",
    "SqliteBackend",
    "StorageKey",
    "UserMessage",
    "blob_id",
    "default_path",
    "export_conversation",
    "openai_messages",
    "sign_pointer",
    "verify_pointer",
]
