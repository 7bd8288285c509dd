"""Tests for the tiny random-weight GGUF writer, against real llama.cpp."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from fabstir.testing.tiny_gguf import write_tiny_gguf

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def llm(llama_cpp: Any, model_path: pathlib.Path) -> Iterator[Any]:
    model = llama_cpp.Llama(model_path=str(model_path), n_ctx=256, verbose=False, seed=0)
    yield model
    model.close()


def test_file_is_small(model_path: pathlib.Path) -> None:
    assert model_path.stat().st_size < 1_000_000


def test_metadata(llm: Any) -> None:
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.metadata["general.name"] == "fabstir-tiny-random"
    assert llm.token_bos() == 1
    assert llm.token_eos() == 2


def test_n_ctx(llm: Any) -> None:
    assert llm.n_ctx() == 256


def test_tokenize_round_trip(llm: Any) -> None:
    tokens = llm.tokenize(PROMPT.encode())
    assert tokens[0] == llm.token_bos()
    assert 1 < len(tokens) <= 6  # whole-word pieces, not byte fallback
    assert llm.detokenize(tokens).strip() == PROMPT.encode()


def test_tokenize_byte_fallback(llm: Any) -> None:
    text = "naïve € 漢字\n".encode()
    tokens = llm.tokenize(text, add_bos=False)
    assert llm.detokenize(tokens).strip() == text.strip()


def test_greedy_completion_runs_to_length(llm: Any) -> None:
    out = llm.create_completion(PROMPT, max_tokens=20, temperature=0)
    choice = out["choices"][0]
    assert out["usage"]["completion_tokens"] == 20
    assert choice["finish_reason"] == "length"
    assert choice["text"]
    again = llm.create_completion(PROMPT, max_tokens=20, temperature=0)
    assert again["choices"][0]["text"] == choice["text"]


def test_sampled_completion_runs_to_length(llm: Any) -> None:
    out = llm.create_completion("Hello\n", max_tokens=40, temperature=1.0, seed=1)
    assert out["usage"]["completion_tokens"] == 40
    assert out["choices"][0]["finish_reason"] == "length"


def test_streaming(llm: Any) -> None:
    chunks = list(llm.create_completion(PROMPT, max_tokens=10, temperature=0, stream=True))
    assert len(chunks) >= 2
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["text"] for c in chunks)
    greedy = llm.create_completion(PROMPT, max_tokens=10, temperature=0)
    assert text == greedy["choices"][0]["text"]


def test_deterministic_per_seed(tmp_path: pathlib.Path) -> None:
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=7).read_bytes()
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=7).read_bytes()
    c = write_tiny_gguf(tmp_path / "c.gguf", seed=8).read_bytes()
    assert a == b
    assert a != c
    assert len(a) == len(c)


def test_context_length_param(llama_cpp: Any, tmp_path: pathlib.Path) -> None:
    path = write_tiny_gguf(tmp_path / "ctx.gguf", context_length=512)
    model = llama_cpp.Llama(model_path=str(path), n_ctx=0, verbose=False)
    try:
        assert model.n_ctx() == 512
    finally:
        model.close()
