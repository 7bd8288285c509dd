"""The llama.cpp engine (``llama-cpp-python``): loads any GGUF file.

Generation uses the token-level API so that every token is counted exactly by
the model's own tokenizer, cancellation is checked between tokens, and UTF-8
sequences split across tokens are never emitted half-way.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fabstir.errors import EngineError, ModelNotFoundError
from fabstir.fingerprints import fingerprint_states, last_state, live_states, stack_states, state_width
from fabstir.node.engines.base import Finished, GenerationEvent, GenerationParams, TokenPiece
from fabstir.node.engines.stops import StopMatcher

__all__ = ["LlamaCppEngine"]


class LlamaCppEngine:
    """One llama.cpp context over a GGUF file. Not thread-safe: one generation at a time."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        model_id: str | None = None,
        context_window: int = 2048,
        threads: int | None = None,
        seed: int = 0,
        fingerprints: bool = True,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        self._llama = _load_llama(path, context_window, threads, seed)
        self._model_id = model_id or path.stem
        self._eog = _end_of_generation_check(self._llama)
        self._pieces: dict[int, bytes] = {}
        self._n_embd = state_width(self._llama) if fingerprints else 0

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def context_window(self) -> int:
        return int(self._llama.n_ctx())

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def _tokenize(self, text: str) -> list[int]:
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def generate(
        self, prompt: str, params: GenerationParams, cancelled: Callable[[], bool]
    ) -> Iterator[GenerationEvent]:
        prompt_tokens = self._tokenize(prompt)
        self._llama.set_seed(params.seed)
        primed = self._answer_tokens(prompt, prompt_tokens, params.answer_prefix)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(params.stop)
        is_end, piece_of = self._eog, self._piece
        generated = 0
        fingerprinted: list[int] = []
        states: list[bytes] = []
        n_embd, llama = self._n_embd, self._llama
        held_tokens = 0
        reason = "length"
        tokens = self._llama.generate(
            prompt_tokens,
            temp=params.temperature,
            top_p=params.top_p,
            top_k=40,
            min_p=0.0,
            repeat_penalty=params.repeat_penalty,
            reset=True,
        )
        if primed:
            self._prime_sampler(primed)
        try:
            for token in tokens:
                if is_end(token):
                    reason = "stop"
                    break
                if n_embd:  # states after the prompt only: the one of the token before this (decoded last)
                    if fingerprinted:
                        states.append(last_state(llama, n_embd))
                    else:
                        live_states(llama, True)
                    fingerprinted.append(token)
                generated += 1
                held_tokens += 1
                text = stops.feed(decoder.decode(piece_of(token)))
                if text:
                    yield TokenPiece(text, held_tokens)
                    held_tokens = 0
                if stops.stopped:
                    reason = "stop"
                    break
                if generated >= params.max_tokens:
                    break
                if cancelled():
                    reason = "cancelled"
                    break
        finally:
            tokens.close()
            self._llama.__dict__.pop("_init_sampler", None)
            if n_embd:
                live_states(llama, False)
        tail = "" if stops.stopped else stops.feed(decoder.decode(b"", final=True)) + stops.flush()
        if tail:
            yield TokenPiece(tail, held_tokens)
        fingerprint = fingerprint_states(stack_states(states, n_embd), fingerprinted) if n_embd else None
        yield Finished(reason, generated, fingerprint)  # type: ignore[arg-type]

    def _answer_tokens(self, prompt: str, prompt_tokens: list[int], answer_prefix: str) -> list[int]:
        """The tokens of ``answer_prefix``, the end of ``prompt`` (a continued answer); ``[]`` for none."""
        if not answer_prefix or not prompt.endswith(answer_prefix):
            return []
        before = len(self._tokenize(prompt[: len(prompt) - len(answer_prefix)]))
        return prompt_tokens[before:]

    def _prime_sampler(self, answer_tokens: list[int]) -> None:
        """Make the next generation's sampler start as if it had just generated ``answer_tokens``.

        llama-cpp-python builds a fresh sampler chain when a generation starts, and its repeat penalty
        only looks at tokens that chain accepted (the ones it sampled, never the prompt's). A continued
        answer must see the same penalty window as the answer it continues, so for this one generation
        the chain is built and then fed the answer's tokens so far (the instance attribute shadows the
        method; :meth:`generate` removes it when the generation ends).
        """
        llama = self._llama
        build = type(llama)._init_sampler

        def primed_sampler(*args: Any, **kwargs: Any) -> Any:
            sampler = build(llama, *args, **kwargs)
            for token in answer_tokens:
                sampler.accept(token)
            return sampler

        llama._init_sampler = primed_sampler

    def _piece(self, token: int) -> bytes:
        """The bytes of one generated token, looked up in llama.cpp once per token id.

        A token's text does not depend on its neighbours here (llama-cpp-python's own tokenizer
        ignores ``prev_tokens``), so the engine thread pays the ctypes call, and the GIL hand-offs
        around it, only the first time it meets a token.
        """
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = bytes(self._llama.detokenize([token]))
        return piece

    def close(self) -> None:
        self._llama.close()


def _load_llama(path: Path, context_window: int, threads: int | None, seed: int) -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise EngineError(
            "the llama.cpp engine is not installed: pip install 'fabstir[llama]'", code="ENGINE_NOT_INSTALLED"
        ) from None
    try:
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=context_window,
            n_threads=threads or max(1, os.cpu_count() or 1),
            seed=seed,
            verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise EngineError(f"could not load model {path}: {exc}", code="MODEL_LOAD_FAILED") from None


def _end_of_generation_check(llama: Any) -> Callable[[int], bool]:
    """Whether a token ends generation; asked of llama.cpp once per token id, then remembered."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    eos = llama.token_eos()
    known: dict[int, bool] = {}

    def is_end(token: int) -> bool:
        answer = known.get(token)
        if answer is None:
            answer = known[token] = token == eos or bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        return answer

    return is_end
