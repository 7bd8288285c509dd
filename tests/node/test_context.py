"""fit_prompt: keep the longest suffix of the history that fits, clamp max_tokens, refuse prompts that cannot fit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir.errors import NodeError, TokenLimitExceededError
from fabstir.node.context import FittedPrompt, fit_prompt
from fabstir.node.engines.llama import LlamaCppEngine
from fabstir.node.engines.templates import TEMPLATES
from fabstir.protocol import ChatTurn

RAW = TEMPLATES["raw"]
PLAIN = TEMPLATES["plain"]
CHATML = TEMPLATES["chatml"]


def words(text: str) -> int:
    """A real (if simple) tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def chars(text: str) -> int:
    """One token per character; with the raw template a prompt's cost is the sum of its parts' lengths."""
    return len(text)


def history_of(*contents: str) -> list[ChatTurn]:
    """Alternating user/assistant turns, starting with the user."""
    return [ChatTurn("user" if i % 2 == 0 else "assistant", c) for i, c in enumerate(contents)]


# Turns of 10, 20, 30 and 40 characters, each made of one distinct letter so the kept text shows which survived.
LETTERS = history_of("a" * 10, "b" * 20, "c" * 30, "d" * 40)
PROMPT = "p" * 5


def fit_raw(context_window: int, max_tokens: int = 1000, min_completion: int = 1,
            history: list[ChatTurn] = LETTERS, prompt: str = PROMPT) -> FittedPrompt:
    return fit_prompt(history, prompt, template=RAW, count_tokens=chars, context_window=context_window,
                      max_tokens=max_tokens, min_completion=min_completion)


def test_everything_fits() -> None:
    fitted = fit_raw(context_window=200, max_tokens=10)
    assert fitted == FittedPrompt(text="a" * 10 + "b" * 20 + "c" * 30 + "d" * 40 + PROMPT, prompt_tokens=105,
                                  max_tokens=10, kept_messages=4, dropped_messages=0)


def test_everything_fits_with_exactly_one_token_to_spare() -> None:
    fitted = fit_raw(context_window=106)
    assert (fitted.kept_messages, fitted.dropped_messages, fitted.prompt_tokens, fitted.max_tokens) == (4, 0, 105, 1)


@pytest.mark.parametrize("context_window,kept_text,kept", [
    (105, "b" * 20 + "c" * 30 + "d" * 40, 3),  # 105 leaves no room for a completion token: drop the oldest
    (96, "b" * 20 + "c" * 30 + "d" * 40, 3),  # 95 + 1
    (95, "c" * 30 + "d" * 40, 2),
    (76, "c" * 30 + "d" * 40, 2),  # 75 + 1
    (75, "d" * 40, 1),
    (46, "d" * 40, 1),  # 45 + 1
    (45, "", 0),
    (6, "", 0),  # the prompt alone (5) plus one completion token
])
def test_drops_oldest_first_and_keeps_longest_suffix(context_window: int, kept_text: str, kept: int) -> None:
    fitted = fit_raw(context_window)
    assert fitted.text == kept_text + PROMPT
    assert fitted.prompt_tokens == len(kept_text) + len(PROMPT)
    assert fitted.kept_messages == kept
    assert fitted.dropped_messages == 4 - kept
    assert fitted.max_tokens == context_window - fitted.prompt_tokens


def test_a_short_old_message_is_not_kept_once_a_newer_one_is_dropped() -> None:
    """Only a suffix is kept: a small oldest turn never survives after a large newer turn is dropped."""
    history = history_of("x", "y" * 50, "z" * 3)
    fitted = fit_raw(context_window=20, history=history)
    assert fitted.text == "z" * 3 + PROMPT
    assert (fitted.kept_messages, fitted.dropped_messages) == (1, 2)


@pytest.mark.parametrize("max_tokens,expected", [(1, 1), (4, 4), (5, 5), (6, 5), (10_000, 5)])
def test_max_tokens_clamped_to_room_left(max_tokens: int, expected: int) -> None:
    fitted = fit_raw(context_window=100, max_tokens=max_tokens)
    assert fitted.prompt_tokens == 95
    assert fitted.max_tokens == expected


def test_min_completion_reserves_room() -> None:
    fitted = fit_raw(context_window=100, min_completion=30)  # budget 70: "c"+"d"+prompt is 75, too much
    assert fitted.text == "d" * 40 + PROMPT
    assert fitted.max_tokens == 55
    assert fit_raw(context_window=100, min_completion=25).text == "c" * 30 + "d" * 40 + PROMPT


def test_empty_history() -> None:
    fitted = fit_raw(context_window=50, history=[])
    assert fitted == FittedPrompt(text=PROMPT, prompt_tokens=5, max_tokens=45, kept_messages=0, dropped_messages=0)


@pytest.mark.parametrize("history", [[], LETTERS])
def test_prompt_alone_too_long(history: list[ChatTurn]) -> None:
    with pytest.raises(TokenLimitExceededError) as caught:
        fit_raw(context_window=5, history=history)  # 5 prompt tokens leave no room for a completion
    error = caught.value
    assert isinstance(error, NodeError)
    assert error.code == "TOKEN_LIMIT_EXCEEDED"
    assert error.message == "Prompt (5 tokens) exceeds context window (5 tokens) by 1 tokens"
    assert error.details == {"prompt_tokens": 5, "context_window_size": 5}


def test_prompt_alone_too_long_with_min_completion() -> None:
    with pytest.raises(TokenLimitExceededError) as caught:
        fit_raw(context_window=10, min_completion=8)
    assert caught.value.message == "Prompt (5 tokens) exceeds context window (10 tokens) by 3 tokens"
    assert caught.value.details == {"prompt_tokens": 5, "context_window_size": 10}
    assert fit_raw(context_window=10, min_completion=5).max_tokens == 5


def test_plain_template_with_word_counter() -> None:
    history = [ChatTurn("system", "Be brief."), ChatTurn("user", "  What is a star?  "),
               ChatTurn("assistant", "A hot ball of gas."), ChatTurn("user", "And the sun?"),
               ChatTurn("assistant", "A star.")]
    preamble = PLAIN.preamble
    base = words(preamble)
    full = (preamble + "Be brief.\n\nUser: What is a star?\nAssistant: A hot ball of gas.\n"
            "User: And the sun?\nAssistant: A star.\nUser: How far?\nAssistant:")
    assert words(full) == base + 2 + 5 + 6 + 4 + 3 + 3 + 1
    fitted = fit_prompt(history, "How far?", template=PLAIN, count_tokens=words, context_window=base + 100,
                        max_tokens=8)
    assert fitted == FittedPrompt(text=full, prompt_tokens=base + 24, max_tokens=8, kept_messages=5,
                                  dropped_messages=0)

    # Budget base + 18: dropping the system turn (2) leaves base + 22, dropping the first question (5) too
    # leaves base + 17.
    fitted = fit_prompt(history, "How far?", template=PLAIN, count_tokens=words, context_window=base + 19,
                        max_tokens=8)
    assert fitted.text == preamble + "Assistant: A hot ball of gas.\nUser: And the sun?\nAssistant: A star.\n" \
                                     "User: How far?\nAssistant:"
    assert (fitted.prompt_tokens, fitted.max_tokens, fitted.kept_messages,
            fitted.dropped_messages) == (base + 17, 2, 3, 2)

    # Budget base + 16: the answer "A hot ball of gas." (6) must go as well, leaving base + 11.
    fitted = fit_prompt(history, "How far?", template=PLAIN, count_tokens=words, context_window=base + 17,
                        max_tokens=8)
    assert fitted.text == preamble + "User: And the sun?\nAssistant: A star.\nUser: How far?\nAssistant:"
    assert (fitted.prompt_tokens, fitted.max_tokens, fitted.kept_messages,
            fitted.dropped_messages) == (base + 11, 6, 2, 3)


def test_chatml_template_with_word_counter() -> None:
    history = history_of("one two three", "four five")
    fitted = fit_prompt(history, "six", template=CHATML, count_tokens=words, context_window=9, max_tokens=50)
    # "<|im_start|>user\none two three<|im_end|>\n" is 4 words; the answer turn 3; the prompt 2; the prefix 1.
    assert fitted.text == ("<|im_start|>assistant\nfour five<|im_end|>\n"
                           "<|im_start|>user\nsix<|im_end|>\n<|im_start|>assistant\n")
    assert (fitted.prompt_tokens, fitted.max_tokens, fitted.kept_messages, fitted.dropped_messages) == (6, 3, 1, 1)
    assert fit_prompt(history, "six", template=CHATML, count_tokens=words, context_window=11,
                      max_tokens=50).kept_messages == 2


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=30), max_size=12),
    prompt_length=st.integers(min_value=1, max_value=20),
    context_window=st.integers(min_value=1, max_value=200),
    max_tokens=st.integers(min_value=1, max_value=300),
    min_completion=st.integers(min_value=1, max_value=10),
)
def test_matches_brute_force(lengths: list[int], prompt_length: int, context_window: int, max_tokens: int,
                             min_completion: int) -> None:
    history = history_of(*("m" * n for n in lengths))
    prompt = "p" * prompt_length
    budget = context_window - min_completion
    if prompt_length > budget:
        with pytest.raises(TokenLimitExceededError):
            fit_raw(context_window, max_tokens, min_completion, history, prompt)
        return
    fitted = fit_raw(context_window, max_tokens, min_completion, history, prompt)
    start = next(i for i in range(len(lengths) + 1) if sum(lengths[i:]) + prompt_length <= budget)
    assert fitted.dropped_messages == start
    assert fitted.kept_messages + fitted.dropped_messages == len(history)
    assert fitted.text == "".join(t.content for t in history[start:]) + prompt
    assert fitted.prompt_tokens == len(fitted.text) <= budget
    assert fitted.max_tokens == min(max_tokens, context_window - fitted.prompt_tokens)
    assert fitted.max_tokens >= min(max_tokens, min_completion)


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[LlamaCppEngine]:
    llama = LlamaCppEngine(tiny_model, context_window=512, threads=1)
    yield llama
    llama.close()


def test_real_tokenizer_long_history(engine: LlamaCppEngine) -> None:
    assert engine.context_window == 512
    history = [ChatTurn("user" if i % 2 == 0 else "assistant",
                        f"turn {i}: once upon a time there was a little cat who liked the sun and the moon")
               for i in range(40)]
    user = ChatTurn("user", "tell me a story")
    assert engine.count_tokens(PLAIN.render([*history, user])) > 512
    fitted = fit_prompt(history, "tell me a story", template=PLAIN, count_tokens=engine.count_tokens,
                        context_window=512, max_tokens=200)
    assert fitted.prompt_tokens <= 511
    assert fitted.prompt_tokens == engine.count_tokens(fitted.text)
    assert fitted.text == PLAIN.render([*history[fitted.dropped_messages:], user])
    assert 0 < fitted.kept_messages < 40
    assert fitted.kept_messages + fitted.dropped_messages == 40
    # the longest suffix: one more (older) message would not fit
    one_more = PLAIN.render([*history[fitted.dropped_messages - 1:], user])
    assert engine.count_tokens(one_more) > 511
    assert fitted.max_tokens == min(200, 512 - fitted.prompt_tokens)


def test_real_tokenizer_prompt_too_long(engine: LlamaCppEngine) -> None:
    prompt = " ".join(["sun"] * 600)
    expected = engine.count_tokens(PLAIN.render([ChatTurn("user", prompt)]))
    with pytest.raises(TokenLimitExceededError) as caught:
        fit_prompt([], prompt, template=PLAIN, count_tokens=engine.count_tokens, context_window=512, max_tokens=5)
    assert caught.value.details == {"prompt_tokens": expected, "context_window_size": 512}
    assert expected > 600
