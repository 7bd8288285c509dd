"""What a conversation is made of: append-only records, and the conversation they fold into."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from fabstir.errors import StorageError

__all__ = ["AssistantChunk", "Conversation", "Message", "Receipt", "Record", "UserMessage", "decode", "encode",
           "fold"]


@dataclasses.dataclass(frozen=True)
class UserMessage:
    """The user's prompt, stored before it is sent, with the model and host it goes to."""

    text: str
    model: str = ""
    host: str = ""


@dataclasses.dataclass(frozen=True)
class AssistantChunk:
    """A batch of answer text as it streams; ``done`` on the last one (an answer without it is partial)."""

    text: str
    done: bool = False


@dataclasses.dataclass(frozen=True)
class Receipt:
    """A host's signed receipt for an answer, as received (JSON-able)."""

    data: Mapping[str, Any]


Record = UserMessage | AssistantChunk | Receipt


@dataclasses.dataclass(frozen=True)
class Message:
    """One turn of a loaded conversation."""

    role: Literal["user", "assistant"]
    content: str
    partial: bool = False
    model: str = ""
    host: str = ""


@dataclasses.dataclass(frozen=True)
class Conversation:
    """A conversation as loaded from storage, in order."""

    session_id: str
    messages: tuple[Message, ...]
    receipts: tuple[Mapping[str, Any], ...] = ()

    @property
    def partial(self) -> bool:
        """True when an answer never finished (the client or the host died while it streamed)."""
        return any(message.partial for message in self.messages)


def encode(record: Record) -> bytes:
    """The record as JSON bytes (sealed before it is stored)."""
    if isinstance(record, UserMessage):
        body: dict[str, Any] = {"kind": "user", "text": record.text, "model": record.model, "host": record.host}
    elif isinstance(record, AssistantChunk):
        body = {"kind": "assistant", "text": record.text, "done": record.done}
    else:
        body = {"kind": "receipt", "data": dict(record.data)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode(raw: bytes) -> Record:
    """The record :func:`encode` wrote; ``STORAGE_BAD_FORMAT`` for anything else."""
    try:
        body = json.loads(raw)
        kind = body["kind"]
        if kind == "user":
            return UserMessage(str(body["text"]), str(body["model"]), str(body["host"]))
        if kind == "assistant":
            return AssistantChunk(str(body["text"]), bool(body["done"]))
        if kind == "receipt" and isinstance(body["data"], dict):
            return Receipt(body["data"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError("unreadable conversation record", code="STORAGE_BAD_FORMAT") from exc
    raise StorageError(f"unknown conversation record {kind!r}", code="STORAGE_BAD_FORMAT")


def fold(session_id: str, records: Iterable[Record]) -> Conversation:
    """The conversation the records describe; an answer whose last chunk is not ``done`` is partial."""
    messages: list[Message] = []
    receipts: list[Mapping[str, Any]] = []
    open_answer = False
    for record in records:
        if isinstance(record, Receipt):
            receipts.append(record.data)
            continue
        if isinstance(record, UserMessage):
            if open_answer:
                messages[-1] = dataclasses.replace(messages[-1], partial=True)
            messages.append(Message("user", record.text, model=record.model, host=record.host))
        elif open_answer:
            messages[-1] = dataclasses.replace(messages[-1], content=messages[-1].content + record.text)
        else:
            last = messages[-1] if messages else Message("user", "")
            messages.append(Message("assistant", record.text, model=last.model, host=last.host))
        open_answer = isinstance(record, AssistantChunk) and not record.done
    if open_answer:
        messages[-1] = dataclasses.replace(messages[-1], partial=True)
    return Conversation(session_id, tuple(messages), tuple(receipts))
