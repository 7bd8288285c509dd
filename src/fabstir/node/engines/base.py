"""The small interface every inference engine implements.

An engine is synchronous and single-threaded: :meth:`Engine.generate` blocks
and yields one :class:`TokenPiece` per generated token, then one
:class:`Finished`. The node runs it on a worker thread (see
:mod:`fabstir.node.engines.pool`), so generation never blocks the event loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Literal, Protocol, TypeAlias

from fabstir.fingerprints import Fingerprint

__all__ = ["Engine", "Finished", "GenerationParams", "TokenPiece", "GenerationEvent", "FinishReason"]

FinishReason = Literal["stop", "length", "cancelled"]


@dataclasses.dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling settings for one response."""

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    stop: tuple[str, ...] = ()
    seed: int = 0
    answer_prefix: str = ""
    """The prompt ends with this start of the answer (a continuation): its tokens count as already
    generated for the repeat penalty, exactly as if this engine had generated them."""


@dataclasses.dataclass(frozen=True, slots=True)
class TokenPiece:
    """Text released after some tokens (usually one; more when UTF-8 or a stop prefix held text back)."""

    text: str
    tokens: int


@dataclasses.dataclass(frozen=True, slots=True)
class Finished:
    """End of generation."""

    finish_reason: FinishReason
    completion_tokens: int
    fingerprint: Fingerprint | None = None
    """The activation fingerprint of the generated tokens (:mod:`fabstir.fingerprints`), from an engine that
    makes one; ``None`` otherwise."""


GenerationEvent: TypeAlias = TokenPiece | Finished


class Engine(Protocol):
    """A loaded model that can count tokens and generate text."""

    @property
    def model_id(self) -> str:
        """Identifier clients use to name this model."""
        ...

    @property
    def context_window(self) -> int:
        """Tokens the model's context holds (prompt plus completion)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a prompt (with BOS), by the model's own tokenizer."""
        ...

    def generate(
        self, prompt: str, params: GenerationParams, cancelled: Callable[[], bool]
    ) -> Iterator[GenerationEvent]:
        """Generate a completion of ``prompt``; checks ``cancelled`` between tokens."""
        ...

    def close(self) -> None:
        """Free the model's memory."""
        ...
