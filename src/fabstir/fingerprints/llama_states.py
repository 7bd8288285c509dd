"""Final hidden states from llama.cpp (``llama-cpp-python``): live while generating, or by one prefill pass.

A llama.cpp context with embeddings on and pooling none returns, for every position it decodes, the
model's final hidden state (after the last norm, before the output matrix); logits are still computed, so
a serving context can keep sampling with it on. It also makes llama.cpp output every position of a batch
(logits too), which would make a long prompt's prefill compute logits it never needs: so a serving engine
turns states on (:func:`live_states`) only after the prompt, once the first token is sampled, and off again
at the end; :func:`last_state` reads the state of the position decoded last. :class:`PrefillStates`
recomputes the same states for a whole answer in one batched pass over prompt + answer (what a verifier
does).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fabstir.errors import FingerprintError, ModelNotFoundError

__all__ = ["PrefillStates", "last_state", "live_states", "stack_states", "state_width"]


def state_width(llama: Any) -> int:
    """The width of ``llama``'s hidden states (``n_embd``)."""
    import llama_cpp

    return int(llama_cpp.llama_model_n_embd(llama.model))


def live_states(llama: Any, on: bool) -> None:
    """Turn hidden-state output on ``llama``'s context on or off."""
    import llama_cpp

    llama_cpp.llama_set_embeddings(llama.ctx, on)


def last_state(llama: Any, n_embd: int) -> bytes:
    """The hidden state of the position ``llama`` decoded last: ``n_embd`` float32 as bytes (a copy; the
    cheapest one per token, :func:`stack_states` makes an array of them at the end)."""
    import llama_cpp

    pointer = llama_cpp.llama_get_embeddings_ith(llama.ctx, -1)
    if not pointer:
        raise FingerprintError("llama.cpp returned no hidden state", code="FINGERPRINT_UNCHECKABLE")
    return ctypes.string_at(pointer, 4 * n_embd)


def stack_states(states: list[bytes], n_embd: int) -> npt.NDArray[np.float32]:
    """The states read by :func:`last_state`, one row each."""
    return np.frombuffer(b"".join(states), dtype=np.float32).reshape(len(states), n_embd)


class PrefillStates:
    """A model loaded for recomputing hidden states: one batched prefill per answer. Not thread-safe."""

    def __init__(self, model_path: str | os.PathLike[str], *, context_window: int = 0, threads: int | None = None,
                 batch: int = 64) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        import llama_cpp

        self._lib = llama_cpp
        threads = threads or max(1, os.cpu_count() or 1)
        try:
            self.llama = llama_cpp.Llama(
                model_path=str(path), n_ctx=context_window, n_batch=batch, n_ubatch=batch, n_threads=threads,
                n_threads_batch=threads, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,
                verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise FingerprintError(f"could not load model {path}: {exc}", code="FINGERPRINT_UNCHECKABLE") from None
        self.n_embd = int(llama_cpp.llama_model_n_embd(self.llama.model))
        self._batch_size = batch
        self._batch = llama_cpp.llama_batch_init(batch, 0, 1)

    @property
    def context_window(self) -> int:
        return int(self.llama.n_ctx())

    def tokenize(self, text: str) -> list[int]:
        """``text`` as a prompt, exactly as the llama.cpp engine tokenizes it (BOS, special tokens)."""
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def detokenize(self, tokens: list[int] | tuple[int, ...]) -> str:
        return bytes(self.llama.detokenize(list(tokens))).decode("utf-8", errors="replace")

    def vocab_size(self) -> int:
        return int(self.llama.n_vocab())

    def answer_states(self, prompt_tokens: list[int], answer_tokens: list[int] | tuple[int, ...]
                      ) -> npt.NDArray[np.float32]:
        """The states at the positions of ``answer_tokens[:-1]`` after ``prompt_tokens`` (one row each)."""
        if len(answer_tokens) < 2:
            return np.zeros((0, self.n_embd), dtype=np.float32)
        sequence = list(prompt_tokens) + list(answer_tokens[:-1])
        if len(sequence) > self.context_window:
            raise FingerprintError(f"prompt + answer take {len(sequence)} tokens, the window {self.context_window}",
                                   code="FINGERPRINT_UNCHECKABLE")
        first = len(prompt_tokens)
        self._clear()
        rows: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(sequence), self._batch_size):
            block = self._decode(sequence[start:start + self._batch_size], start)
            skip = max(0, first - start)
            if skip < len(block):
                rows.append(block[skip:])
        return np.concatenate(rows)

    def decoded_states(self, prompt_tokens: list[int], count: int) -> tuple[list[int], npt.NDArray[np.float32]]:
        """Generate ``count`` tokens greedily, one decode per token as a serving engine does; returns them and
        the states at the positions of all but the last (the host's path, to calibrate against the
        verifier's batched prefill: :func:`fabstir.fingerprints.calibrate`)."""
        if len(prompt_tokens) + count > self.context_window:
            raise FingerprintError("calibration prompt does not fit the window", code="FINGERPRINT_UNCHECKABLE")
        self._clear()
        for start in range(0, len(prompt_tokens), self._batch_size):
            self._decode(prompt_tokens[start:start + self._batch_size], start)
        tokens = [self._greedy()]
        rows = []
        for position in range(len(prompt_tokens), len(prompt_tokens) + count - 1):
            rows.append(self._decode([tokens[-1]], position)[0])
            tokens.append(self._greedy())
        return tokens, np.stack(rows) if rows else np.zeros((0, self.n_embd), dtype=np.float32)

    def _clear(self) -> None:
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self.llama.ctx), True)

    def _decode(self, part: list[int], start: int) -> npt.NDArray[np.float32]:
        """Decode ``part`` at positions ``start...``; the states of all its positions (a copy)."""
        lib, batch = self._lib, self._batch
        batch.n_tokens = len(part)
        for i, token in enumerate(part):  # with embeddings on, llama.cpp outputs every position anyway
            batch.token[i] = token
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        if lib.llama_decode(self.llama.ctx, batch) != 0:
            raise FingerprintError("llama.cpp could not decode the answer", code="FINGERPRINT_UNCHECKABLE")
        pointer = lib.llama_get_embeddings(self.llama.ctx)
        return np.ctypeslib.as_array(pointer, shape=(len(part) * self.n_embd,)).reshape(len(part), -1).copy()

    def _greedy(self) -> int:
        """The most likely next token after the position decoded last."""
        pointer = self._lib.llama_get_logits_ith(self.llama.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(pointer, shape=(self.vocab_size(),))))

    def close(self) -> None:
        self._lib.llama_batch_free(self._batch)
        self.llama.close()
