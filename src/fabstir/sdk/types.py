"""Public value types of the SDK: prompt options and inference results."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from fabstir.errors import ConfigError, StorageError
from fabstir.protocol import Usage
from fabstir.protocol.signing import Receipt

__all__ = ["AnswerPart", "HostSwitch", "InferenceResult", "PromptOptions", "TokenCallback"]

TokenCallback = Callable[[str], "None | Awaitable[None]"]
"""Called with each piece of text as it arrives (plain function or coroutine)."""


@dataclasses.dataclass(frozen=True, slots=True)
class PromptOptions:
    """How to generate one answer."""

    model: str = ""
    """Model id; empty uses the host's default model."""
    max_tokens: int = 256
    """Upper bound on generated tokens (the node may clamp it to the context left)."""
    temperature: float = 0.7
    """0 is greedy (deterministic); up to 2."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError("max_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError("temperature must be between 0 and 2")


@dataclasses.dataclass(frozen=True, slots=True)
class InferenceResult:
    """One finished answer, with its accounting and timings."""

    text: str
    finish_reason: str | None
    """``stop``, ``length`` or ``cancelled``."""
    usage: Usage | None
    """Prompt and completion tokens as counted by the host's tokenizer (None on nodes that omit it)."""
    tokens_used: int
    """Tokens the host reported streaming (what the public node bills)."""
    message_index: int | None
    """Index of this turn in the session, when the host tracks it."""
    ttft_ms: float | None
    """Time to first token, from sending the prompt."""
    tokens_per_s: float
    """Completion tokens per second over the whole request."""
    session_id: str
    request_id: str
    receipt: Receipt | None = None
    """The host's Ed25519-signed receipt for this answer, already verified (None from nodes without it)."""
    storage_error: StorageError | None = None
    """With ``FabstirSDK(storage=...)``: the first failure storing this exchange (the answer itself is fine)."""
    parts: tuple[AnswerPart, ...] = ()
    """Which host served which tokens of the answer, in order: one part, or one per host after a failover."""

    @property
    def hosts(self) -> tuple[str, ...]:
        """The URLs of the hosts that served the answer, in order."""
        return tuple(part.host for part in self.parts)

    @property
    def switch_offsets(self) -> tuple[int, ...]:
        """The token offsets at which the answer moved to another host (empty when it never did)."""
        return tuple(part.first_token for part in self.parts[1:])

    @property
    def receipts(self) -> tuple[Receipt, ...]:
        """Every signed receipt of the answer, one per host that finished its part (a host that died sent none)."""
        return tuple(part.receipt for part in self.parts if part.receipt is not None)

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens if self.usage is not None else self.tokens_used

    @property
    def cancelled(self) -> bool:
        return self.finish_reason == "cancelled"


@dataclasses.dataclass(frozen=True, slots=True)
class AnswerPart:
    """The tokens of one answer that one host served."""

    host: str
    """The host's URL."""
    first_token: int
    """Offset of its first token in the answer."""
    tokens: int
    """Tokens it streamed (as it counted them in its chunks)."""
    text: str
    receipt: Receipt | None = None
    """Its verified receipt for the part; ``None`` when it failed before sending one (or never signs)."""
    job_id: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class HostSwitch:
    """A session's move to another host (``switch_host``, or a failover mid-answer)."""

    from_host: str
    to_host: str
    reason: str
    """``requested`` (``switch_host``) or ``failed`` (the old host died or stalled)."""
    from_job: int | None = None
    to_job: int | None = None
    """The new session job (``None`` on a free host)."""
    deposit: int = 0
    """Base units put in escrow for the new job (the budget left)."""
