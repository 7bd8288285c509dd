"""The node's inference service: context fitting plus pooled generation.

Shared by the WebSocket handler and the HTTP API, so both count tokens,
truncate context and clamp ``max_tokens`` the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from fabstir.node.context import FittedPrompt, fit_prompt
from fabstir.node.engines.base import GenerationEvent, GenerationParams
from fabstir.node.engines.pool import EnginePool
from fabstir.node.engines.templates import PromptTemplate
from fabstir.protocol import PUBLIC_CONTEXT_MESSAGES, ChatTurn, InferenceRequest

__all__ = ["InferenceService", "PreparedPrompt", "PUBLIC_CONTEXT_MESSAGES"]



@dataclasses.dataclass(frozen=True, slots=True)
class PreparedPrompt:
    """A request ready to generate."""

    fitted: FittedPrompt
    params: GenerationParams


class InferenceService:
    """Turns requests into prompts that fit, and streams their generation."""

    def __init__(self, pool: EnginePool, template: PromptTemplate, *, seed: int = 0,
                 repeat_penalty: float = 1.1) -> None:
        self.pool = pool
        self.template = template
        self.seed = seed
        self.repeat_penalty = repeat_penalty

    @property
    def model_id(self) -> str:
        return self.pool.primary.model_id

    @property
    def context_window(self) -> int:
        return self.pool.primary.context_window

    def prepare(self, request: InferenceRequest, history: Sequence[ChatTurn]) -> PreparedPrompt:
        """Fit ``history`` (or the request's own context) and the prompt into the window.

        A request's ``continue_from`` follows the prompt as the answer so far, so generation goes on from it.

        Raises:
            TokenLimitExceededError: the prompt cannot fit.
        """
        if request.conversation_context is not None:
            history = request.conversation_context[-PUBLIC_CONTEXT_MESSAGES:]
        fitted = fit_prompt(
            history,
            request.prompt,
            template=self.template,
            count_tokens=self.pool.primary.count_tokens,
            context_window=self.context_window,
            max_tokens=request.max_tokens,
            continuation=request.continue_from or "",
        )
        params = GenerationParams(
            max_tokens=fitted.max_tokens,
            temperature=request.temperature,
            repeat_penalty=self.repeat_penalty,
            stop=self.template.stop,
            seed=self.seed,
            answer_prefix=request.continue_from or "",
        )
        return PreparedPrompt(fitted, params)

    @contextlib.asynccontextmanager
    async def open_stream(
        self, prepared: PreparedPrompt, cancel: threading.Event, client: str = "", *, coalesce: bool = False
    ) -> AsyncIterator[AsyncGenerator[GenerationEvent, None]]:
        """Wait for a free engine, then hand out its token stream; the engine is released on exit.

        Args:
            client: who asks (the client's address); waiting clients take turns at the engines.
            coalesce: hand over the pieces already queued as one (see :meth:`EnginePool.stream`).
        """
        async with self.pool.acquire(client) as engine:
            stream = self.pool.stream(engine, prepared.fitted.text, prepared.params, cancel, coalesce=coalesce)
            try:
                yield stream
            finally:
                await stream.aclose()
