"""Fit a conversation into the model's context window.

The node keeps each session's history and, for every prompt, renders the
longest suffix of it that leaves room for at least ``min_completion`` tokens,
dropping the oldest messages first. ``max_tokens`` is then clamped to the
room left. A prompt that cannot fit even with no history is an error the
caller turns into ``TOKEN_LIMIT_EXCEEDED``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from fabstir.errors import TokenLimitExceededError
from fabstir.node.engines.templates import PromptTemplate
from fabstir.protocol import ChatTurn

__all__ = ["FittedPrompt", "fit_prompt"]


@dataclasses.dataclass(frozen=True, slots=True)
class FittedPrompt:
    """The rendered prompt and what it cost."""

    text: str
    prompt_tokens: int
    max_tokens: int
    kept_messages: int
    dropped_messages: int


def fit_prompt(
    history: Sequence[ChatTurn],
    prompt: str,
    *,
    template: PromptTemplate,
    count_tokens: Callable[[str], int],
    context_window: int,
    max_tokens: int,
    min_completion: int = 1,
    continuation: str = "",
) -> FittedPrompt:
    """Render ``history`` + ``prompt`` so that it fits ``context_window``.

    ``continuation`` (the start of the answer, streamed before by another host) follows the rendered
    prompt as the assistant's text so far; it counts against the window like the prompt.

    Raises:
        TokenLimitExceededError: the prompt alone leaves no room for ``min_completion`` tokens.
    """
    budget = context_window - min_completion
    user = ChatTurn("user", prompt)
    alone = template.render([user]) + continuation
    alone_tokens = count_tokens(alone)
    if alone_tokens > budget:
        raise TokenLimitExceededError(
            f"Prompt ({alone_tokens} tokens) exceeds context window ({context_window} tokens) "
            f"by {alone_tokens + min_completion - context_window} tokens",
            details={"prompt_tokens": alone_tokens, "context_window_size": context_window},
        )
    start = _first_fitting(history, user, template, count_tokens, budget, continuation)
    if start == len(history):
        text, tokens = alone, alone_tokens
    else:
        text = template.render([*history[start:], user]) + continuation
        tokens = count_tokens(text)
    return FittedPrompt(
        text=text,
        prompt_tokens=tokens,
        max_tokens=min(max_tokens, context_window - tokens),
        kept_messages=len(history) - start,
        dropped_messages=start,
    )


def _first_fitting(
    history: Sequence[ChatTurn],
    user: ChatTurn,
    template: PromptTemplate,
    count_tokens: Callable[[str], int],
    budget: int,
    continuation: str,
) -> int:
    """Smallest index ``i`` such that ``history[i:] + [user]`` (and ``continuation``) fits ``budget`` (binary search)."""
    def fits(i: int) -> bool:
        return count_tokens(template.render([*history[i:], user]) + continuation) <= budget

    low, high = 0, len(history)
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return low
