"""A loaded conversation as ``json``, ``markdown`` or OpenAI-style ``messages``."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

from fabstir.errors import StorageError
from fabstir.storage.records import Conversation

__all__ = ["ExportFormat", "export_conversation", "openai_messages"]

ExportFormat = Literal["json", "markdown", "messages"]


def openai_messages(conversation: Conversation) -> list[dict[str, str]]:
    """``[{"role": ..., "content": ...}]``, ready for a chat-completions request."""
    return [{"role": m.role, "content": m.content} for m in conversation.messages]


def _markdown(conversation: Conversation) -> str:
    parts = [f"# Conversation {conversation.session_id}\n"]
    for message in conversation.messages:
        title = "User" if message.role == "user" else "Assistant"
        suffix = " (unfinished)" if message.partial else ""
        parts.append(f"## {title}{suffix}\n\n{message.content}\n")
    return "\n".join(parts)


def export_conversation(conversation: Conversation, format: ExportFormat) -> str:
    """The conversation as text in ``format``."""
    if format == "json":
        body = {"session_id": conversation.session_id, "partial": conversation.partial,
                "messages": [dataclasses.asdict(m) for m in conversation.messages],
                "receipts": [dict(r) for r in conversation.receipts]}
        return json.dumps(body, ensure_ascii=False, indent=2)
    if format == "markdown":
        return _markdown(conversation)
    if format == "messages":
        return json.dumps(openai_messages(conversation), ensure_ascii=False, indent=2)
    raise StorageError(f"unknown export format {format!r}", code="STORAGE_BAD_FORMAT")
