"""Chat prompt templates: turn a conversation into one completion prompt.

``plain`` suits base models such as Gemma 3 270M (no chat template of their
own); ``raw`` concatenates the text as is (useful for story models and golden
tests); ``chatml`` and ``gemma`` follow those families' instruction formats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fabstir.errors import ConfigError
from fabstir.protocol import ChatTurn

__all__ = ["PromptTemplate", "TEMPLATES", "get_template"]


@dataclasses.dataclass(frozen=True, slots=True)
class PromptTemplate:
    """How to render turns, and which strings end the assistant's answer."""

    name: str
    turn_format: dict[str, str]
    assistant_prefix: str
    stop: tuple[str, ...]
    preamble: str = ""
    strip: bool = True

    def render(self, turns: Sequence[ChatTurn]) -> str:
        """Render the conversation, ending where the assistant should continue."""
        body = "".join(
            self.turn_format[t.role].format(content=t.content.strip() if self.strip else t.content) for t in turns
        )
        return self.preamble + body + self.assistant_prefix


TEMPLATES: dict[str, PromptTemplate] = {
    "plain": PromptTemplate(
        name="plain",
        preamble=(
            "A conversation between a curious user and a knowledgeable assistant who answers in full sentences.\n\n"
            "User: What is the tallest mountain on Earth?\n"
            "Assistant: Mount Everest is the tallest mountain on Earth, at 8,849 metres above sea level.\n"
        ),
        turn_format={
            "system": "{content}\n\n",
            "user": "User: {content}\n",
            "assistant": "Assistant: {content}\n",
        },
        assistant_prefix="Assistant:",
        stop=("\nUser:", "\nAssistant:", "\n\n\n"),
    ),
    "raw": PromptTemplate(
        name="raw",
        turn_format={"system": "{content}\n", "user": "{content}", "assistant": "{content}"},
        assistant_prefix="",
        stop=(),
        strip=False,
    ),
    "chatml": PromptTemplate(
        name="chatml",
        turn_format={
            role: f"<|im_start|>{role}\n{{content}}<|im_end|>\n" for role in ("system", "user", "assistant")
        },
        assistant_prefix="<|im_start|>assistant\n",
        stop=("<|im_end|>",),
    ),
    "gemma": PromptTemplate(
        name="gemma",
        turn_format={
            "system": "<start_of_turn>user\n{content}<end_of_turn>\n",
            "user": "<start_of_turn>user\n{content}<end_of_turn>\n",
            "assistant": "<start_of_turn>model\n{content}<end_of_turn>\n",
        },
        assistant_prefix="<start_of_turn>model\n",
        stop=("<end_of_turn>",),
    ),
}


def get_template(name: str) -> PromptTemplate:
    """Look up a template by name.

    Raises:
        ConfigError: no template has that name.
    """
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConfigError(f"unknown prompt template {name!r}; choose one of {', '.join(TEMPLATES)}") from None
