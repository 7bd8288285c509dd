"""Prompt templates: how each renders a conversation, its stop strings, and lookup by name."""

from __future__ import annotations

import dataclasses

import pytest

from fabstir.errors import ConfigError
from fabstir.node.engines.templates import TEMPLATES, PromptTemplate, get_template
from fabstir.protocol import ChatTurn

CONVERSATION = [
    ChatTurn("system", "Be brief."),
    ChatTurn("user", "What is the sun?"),
    ChatTurn("assistant", "A star."),
    ChatTurn("user", "How far is it?"),
]


def test_template_names() -> None:
    assert list(TEMPLATES) == ["plain", "raw", "chatml", "gemma"]
    for name, template in TEMPLATES.items():
        assert template.name == name
        assert get_template(name) is template


def test_plain() -> None:
    plain = TEMPLATES["plain"]
    assert plain.preamble.endswith("\n"), "turns must start on a line of their own"
    assert plain.render(CONVERSATION) == (
        plain.preamble
        + "Be brief.\n\n"
        + "User: What is the sun?\n"
        + "Assistant: A star.\n"
        + "User: How far is it?\n"
        + "Assistant:"
    )
    assert plain.stop == ("\nUser:", "\nAssistant:", "\n\n\n")


def test_plain_strips_each_turn() -> None:
    plain = TEMPLATES["plain"]
    rendered = plain.render([ChatTurn("user", "  \n hello there \t\n"), ChatTurn("assistant", "\nhi ")])
    assert rendered == plain.preamble + "User: hello there\nAssistant: hi\nAssistant:"


def test_raw_concatenates_and_keeps_whitespace() -> None:
    raw = TEMPLATES["raw"]
    assert raw.render([ChatTurn("user", "Once upon a time")]) == "Once upon a time"
    assert raw.render([ChatTurn("user", "  Once upon a time, \n")]) == "  Once upon a time, \n"
    assert raw.render(CONVERSATION) == "Be brief.\nWhat is the sun?A star.How far is it?"
    assert raw.render([ChatTurn("system", " sys "), ChatTurn("assistant", " out\n")]) == " sys \n out\n"
    assert raw.preamble == "" and raw.assistant_prefix == "" and raw.stop == () and raw.strip is False


def test_chatml() -> None:
    chatml = TEMPLATES["chatml"]
    assert chatml.render(CONVERSATION) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is the sun?<|im_end|>\n"
        "<|im_start|>assistant\nA star.<|im_end|>\n"
        "<|im_start|>user\nHow far is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chatml.stop == ("<|im_end|>",)
    assert chatml.render([ChatTurn("user", " hi \n")]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_gemma() -> None:
    gemma = TEMPLATES["gemma"]
    assert gemma.render(CONVERSATION) == (
        "<start_of_turn>user\nBe brief.<end_of_turn>\n"  # Gemma has no system role: it is a user turn
        "<start_of_turn>user\nWhat is the sun?<end_of_turn>\n"
        "<start_of_turn>model\nA star.<end_of_turn>\n"
        "<start_of_turn>user\nHow far is it?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert gemma.stop == ("<end_of_turn>",)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_empty_conversation_is_preamble_and_prefix(name: str) -> None:
    template = TEMPLATES[name]
    assert template.render([]) == template.preamble + template.assistant_prefix


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_braces_in_content_are_literal(name: str) -> None:
    content = "{content} {0} {} {{x}} }{"
    rendered = TEMPLATES[name].render([ChatTurn("user", content)])
    assert content in rendered
    assert rendered.count("{content}") == 1


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_every_role_has_a_format(name: str) -> None:
    assert set(TEMPLATES[name].turn_format) == {"system", "user", "assistant"}
    assert all(fmt.count("{content}") == 1 for fmt in TEMPLATES[name].turn_format.values())


@pytest.mark.parametrize("name", ["", "Plain", "CHATML", "llama", "gemma ", " raw", "chatml\n"])
def test_get_template_unknown_name(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        get_template(name)
    assert caught.value.code == "CONFIG_ERROR"
    assert caught.value.message == f"unknown prompt template {name!r}; choose one of plain, raw, chatml, gemma"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_templates_are_immutable() -> None:
    template: PromptTemplate = TEMPLATES["chatml"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.name = "other"  # type: ignore[misc]
