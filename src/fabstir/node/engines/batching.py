"""The continuous-batching llama.cpp engine: many answers decoded together in one context.

One llama.cpp context holds a unified KV cache with one sequence (``seq_id``) per answer in flight. A
scheduler thread owns the context; every step it

1. admits waiting requests into free sequences (the node's engine pool decides who may wait here: it
   hands out :meth:`BatchingEngine.slots`, one per sequence, in its fair per-client order),
2. builds one ``llama_batch``: the last sampled token of every generating sequence, then prompt tokens of
   sequences still reading their prompt, at most ``prefill_chunk`` of them while others generate (so a long
   prompt is read in chunks between decode steps and never stalls the streams),
3. runs one ``llama_decode`` and samples each sequence that produced logits with its own sampler chain
   (built exactly as ``llama-cpp-python`` builds :class:`~fabstir.node.engines.llama.LlamaCppEngine`'s, so a
   greedy answer is the same text, and a seeded one the same draw),
4. hands each request its :class:`TokenPiece` (stop sequences and UTF-8 held back per sequence, as the
   single engine does), and finishes those that stopped, reached ``max_tokens`` or were cancelled; a finished
   sequence is free for the next request at the next step.

Activation fingerprints (:mod:`fabstir.fingerprints`), as the single engine makes them: each answer's
:class:`Finished` carries the final hidden states at the positions of its generated tokens but the last. llama.cpp
gives states for every position of a batch once they are on (and then computes logits for every position too),
so while fingerprinting, a step whose batch would mix prompt chunks with generating sequences decodes them as two
batches: the generating tokens with states on, the prompt chunks with states off.

KV reuse: a finished sequence keeps its tokens in the cache. A new request goes to the free sequence whose
cached tokens share the longest prefix with its prompt (a session's next turn, or another answer to the same
system prompt) and only the rest is read; the tail that differs is removed first. When another sequence, running
or not, holds a longer shared start, its cells are shared instead (``llama_memory_seq_cp`` in the unified cache
adds this sequence's id to them; nothing is copied or decoded again). ``prompt_tokens_read`` counts the prompt
tokens actually decoded.

Threads: :meth:`BatchingEngine.submit` (any thread) queues a request with a sink; the scheduler thread, the only
one that touches the llama.cpp context, tokenizes it and calls the sink with each event. The node's pool hands
the sink of its stream, so tokens go from the scheduler straight to the event loop (no thread per answer, whose
hand-offs of the GIL would slow every step); :meth:`BatchingEngine.generate` is the blocking form.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fabstir.errors import EngineError, ModelNotFoundError
from fabstir.fingerprints import fingerprint_states, stack_states
from fabstir.node.engines.base import Engine, Finished, FinishReason, GenerationEvent, GenerationParams, TokenPiece
from fabstir.node.engines.stops import StopMatcher

__all__ = ["BatchingEngine"]

PENALTY_LAST_N = 64
"""Tokens the repeat penalty looks back at (``llama-cpp-python``'s ``last_n_tokens_size``)."""
BATCH_TOKENS = 512
"""Tokens in one decode step at most (the context's ``n_batch``, as the single engine's)."""


Sink = Callable[[Any], None]
"""Takes each event of one answer (:class:`TokenPiece`, then :class:`Finished`, or an exception instead)."""


@dataclasses.dataclass(eq=False)
class _Request:
    """One answer: submitted by :meth:`BatchingEngine.submit`, advanced by the scheduler."""

    text: str
    params: GenerationParams
    cancelled: Callable[[], bool]
    put: Sink
    prompt: list[int] = dataclasses.field(default_factory=list)
    """The prompt's tokens (the scheduler tokenizes at admission)."""
    primed: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class _Sequence:
    """One ``seq_id`` of the KV cache and what it is doing."""

    seq_id: int
    cached: list[int] = dataclasses.field(default_factory=list)
    """Tokens in the KV cache for this sequence, in position order."""
    request: _Request | None = None
    sampler: Any = None
    todo: list[int] = dataclasses.field(default_factory=list)
    """Tokens to feed: what is left of the prompt, or the one token sampled last."""
    output_index: int = -1
    """Index of this sequence's logits in the current batch (-1: none)."""
    generated: int = 0
    held_tokens: int = 0
    decoder: Any = None
    stops: StopMatcher | None = None
    last_used: int = 0
    fingerprinted: list[int] = dataclasses.field(default_factory=list)
    """The answer's generated tokens (with fingerprints on)."""
    states: list[bytes] = dataclasses.field(default_factory=list)
    """The hidden states at the positions of ``fingerprinted`` but the last, as float32 bytes."""


class BatchingEngine:
    """One llama.cpp context decoding up to ``sequences`` answers at once (see the module docstring).

    Args:
        model_path: the GGUF file.
        context_window: tokens each answer's sequence may hold (prompt plus completion); the KV cache
            holds ``context_window * sequences`` tokens.
        sequences: answers decoded together at most (the node's pool hands out this many slots).
        threads: CPU threads for decoding (``None``: all cores).
        prefill_chunk: prompt tokens read per step at most while other sequences are generating.
        fingerprints: put each answer's activation fingerprint in its :class:`Finished` (see the module
            docstring).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        model_id: str | None = None,
        context_window: int = 2048,
        sequences: int = 8,
        threads: int | None = None,
        seed: int = 0,
        prefill_chunk: int = 256,
        flash_attention: bool = False,
        fingerprints: bool = True,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        if sequences < 1 or context_window < 1 or prefill_chunk < 1:
            raise EngineError("sequences, context_window and prefill_chunk must be at least 1")
        self._lib = _llama_cpp()
        self._model_id = model_id or path.stem
        self._context_window = context_window
        self._prefill_chunk = min(prefill_chunk, BATCH_TOKENS)
        self._seed = seed
        self._model, self._ctx = _load(self._lib, path, context_window * sequences, sequences,
                                       threads or max(1, os.cpu_count() or 1), flash_attention)
        self._memory = self._lib.llama_get_memory(self._ctx)
        self._sample = _sample_holding_the_gil(self._lib)
        self._batch = self._lib.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._vocab = self._model.vocab
        self._n_vocab = int(self._lib.llama_vocab_n_tokens(self._vocab))
        self._eos = int(self._model.token_eos())
        self._n_embd = int(self._lib.llama_model_n_embd(self._model.model)) if fingerprints else 0
        self._states_on = False
        self.prompt_tokens_read = 0
        """Prompt tokens decoded since the engine started (what the KV reuse saved is not in it)."""
        self._eog: dict[int, bool] = {}
        self._pieces: dict[int, bytes] = {}
        self._sequences = [_Sequence(i) for i in range(sequences)]
        self._pending: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._clock = 0
        self._thread = threading.Thread(target=self._run, name="fabstir-batch", daemon=True)
        self._thread.start()

    # --- the Engine interface -----------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def sequences(self) -> int:
        """Answers decoded together at most."""
        return len(self._sequences)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def cached_tokens(self) -> list[int]:
        """Tokens each sequence holds in the KV cache (a snapshot, for tests and monitoring)."""
        with self._wake:
            return [len(seq.cached) for seq in self._sequences]

    def slots(self) -> list[Engine]:
        """One handle per sequence, for the node's :class:`~fabstir.node.engines.pool.EnginePool`."""
        return [_Slot(self) for _ in self._sequences]

    def submit(self, prompt: str, params: GenerationParams, cancelled: Callable[[], bool], put: Sink) -> None:
        """Add ``prompt`` to the running batch; the scheduler thread calls ``put`` with each of its events.

        The events are :class:`TokenPiece` objects and a last :class:`Finished`, or an exception instead
        (an :class:`EngineError`: ``PROMPT_TOO_LONG``, ``ENGINE_DECODE_FAILED``). ``cancelled`` is checked every
        step; once it is true the answer finishes as cancelled and its sequence is free.

        Raises:
            EngineError: ENGINE_CLOSED.
        """
        with self._wake:
            if self._closed:
                raise EngineError("the engine is closed", code="ENGINE_CLOSED")
            self._pending.append(_Request(prompt, params, cancelled, put))
            self._wake.notify()

    def generate(
        self, prompt: str, params: GenerationParams, cancelled: Callable[[], bool]
    ) -> Iterator[GenerationEvent]:
        """:meth:`submit`, with the events yielded here (blocking); closing the iterator early cancels."""
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        abandoned = threading.Event()
        self.submit(prompt, params, lambda: abandoned.is_set() or cancelled(), events.put)
        finished = False
        try:
            while True:
                event = events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    finished = True
                    return
        finally:
            if not finished:
                abandoned.set()
                with self._wake:
                    self._wake.notify()

    def close(self) -> None:
        """Stop the scheduler (answers in flight end as cancelled) and free the model."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._thread.join()
        lib = self._lib
        for seq in self._sequences:
            self._free_sampler(seq)
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._ctx)
        self._model.close()

    # --- tokens -----------------------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[int]:
        if self._closed:
            raise EngineError("the engine is closed", code="ENGINE_CLOSED")
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def _answer_tokens(self, prompt: str, prompt_tokens: list[int], answer_prefix: str) -> list[int]:
        """The tokens of ``answer_prefix``, the end of ``prompt`` (as :class:`LlamaCppEngine` finds them)."""
        if not answer_prefix or not prompt.endswith(answer_prefix):
            return []
        before = len(self._tokenize(prompt[: len(prompt) - len(answer_prefix)]))
        return prompt_tokens[before:]

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = bytes(self._model.detokenize([token]))
        return piece

    def _is_end(self, token: int) -> bool:
        answer = self._eog.get(token)
        if answer is None:
            answer = self._eog[token] = token == self._eos or bool(self._lib.llama_vocab_is_eog(self._vocab, token))
        return answer

    # --- the scheduler ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._admit():
                try:
                    self._step()
                except Exception as exc:  # every answer in flight gets the error
                    self._fail_all(exc)
        finally:
            for seq in self._sequences:
                if seq.request is not None:
                    self._finish(seq, "cancelled")
            with self._wake:
                pending, self._pending = list(self._pending), deque()
            for request in pending:
                request.put(Finished("cancelled", 0))

    def _admit(self) -> bool:
        """Move waiting requests into free sequences; block while there is nothing to do. False: closed."""
        with self._wake:
            while True:
                if self._closed:
                    return False
                active = any(seq.request is not None for seq in self._sequences)
                if self._pending and any(seq.request is None for seq in self._sequences):
                    break
                if active:
                    return True
                self._wake.wait()
            free = sum(seq.request is None for seq in self._sequences)
            admitted = [self._pending.popleft() for _ in range(min(free, len(self._pending)))]
        for request in admitted:
            try:
                self._read_prompt(request)  # tokenized first: the sequence is chosen by its cached prefix
            except Exception as exc:  # this request fails; the others go on
                request.put(exc)
                continue
            seq = max((s for s in self._sequences if s.request is None),
                      key=lambda s: (_shared_start(s.cached, request.prompt), -s.last_used))
            with self._wake:
                seq.request = request
            try:
                self._start(seq, request)
            except Exception as exc:
                self._release(seq, exc)
        return True

    def _read_prompt(self, request: _Request) -> None:
        """Tokenize ``request``'s prompt (and find its continuation's tokens).

        Raises:
            EngineError: PROMPT_TOO_LONG.
        """
        tokens = request.prompt = self._tokenize(request.text)
        if len(tokens) >= self._context_window:
            raise EngineError(f"prompt of {len(tokens)} tokens does not fit the context window "
                              f"({self._context_window})", code="PROMPT_TOO_LONG")
        request.primed = self._answer_tokens(request.text, tokens, request.params.answer_prefix)

    def _start(self, seq: _Sequence, request: _Request) -> None:
        """Give ``seq`` to ``request``: keep the cached prefix (or share a longer one another sequence holds),
        build its sampler."""
        lib = self._lib
        keep = min(_common_prefix(seq.cached, request.prompt), len(request.prompt) - 1)
        donor = max((s for s in self._sequences if s is not seq),
                    key=lambda s: _shared_start(s.cached, request.prompt), default=None)
        shared = min(_shared_start(donor.cached, request.prompt), len(request.prompt) - 1) if donor else 0
        if donor is not None and shared > keep:  # its cells get this sequence's id too: nothing is decoded again
            lib.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
            lib.llama_memory_seq_cp(self._memory, donor.seq_id, seq.seq_id, 0, shared)
            seq.cached = donor.cached[:shared]
            keep = shared
        if keep < len(seq.cached):
            if not lib.llama_memory_seq_rm(self._memory, seq.seq_id, keep, -1):
                keep = 0
                lib.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
            del seq.cached[keep:]
        seq.todo = request.prompt[keep:]
        seq.generated = seq.held_tokens = 0
        seq.fingerprinted, seq.states = [], []
        seq.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        seq.stops = StopMatcher(request.params.stop)
        seq.sampler = self._sampler(request.params)
        for token in request.primed:
            lib.llama_sampler_accept(seq.sampler, token)
        self._clock += 1
        seq.last_used = self._clock

    def _sampler(self, params: GenerationParams) -> Any:
        """The chain ``llama-cpp-python`` builds for ``Llama.generate`` (top_k 40, min_p 0, typical 1)."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lib.llama_sampler_chain_add
        add(chain, lib.llama_sampler_init_penalties(self._n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0))
        if params.temperature < 0.0:
            add(chain, lib.llama_sampler_init_dist(params.seed))
        elif params.temperature == 0.0:
            add(chain, lib.llama_sampler_init_greedy())
        else:
            add(chain, lib.llama_sampler_init_top_k(40))
            add(chain, lib.llama_sampler_init_typical(1.0, 1))
            add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
            add(chain, lib.llama_sampler_init_min_p(0.0, 1))
            add(chain, lib.llama_sampler_init_temp(params.temperature))
            add(chain, lib.llama_sampler_init_dist(params.seed))
        return chain

    def _step(self) -> None:
        """One decode of every generating sequence plus a chunk of prompts; then sample and hand out."""
        decoding: list[_Sequence] = []
        reading: list[_Sequence] = []
        for seq in self._sequences:
            request = seq.request
            if request is None:
                continue
            if request.cancelled():
                self._finish(seq, "cancelled")
            elif seq.generated:
                decoding.append(seq)
            else:
                reading.append(seq)
        budget = BATCH_TOKENS - len(decoding)
        if decoding:
            budget = min(budget, self._prefill_chunk)
        if self._n_embd and decoding:  # states for the generating tokens only: two batches
            self._decode_and_sample(decoding, [], 0)
            self._decode_and_sample([], reading, budget)
        else:
            self._decode_and_sample(decoding, reading, budget)

    def _decode_and_sample(self, decoding: list[_Sequence], reading: list[_Sequence], budget: int) -> None:
        """One ``llama_decode`` of the generating ``decoding`` and up to ``budget`` prompt tokens of ``reading``;
        then sample every sequence that produced logits (and, fingerprinting, keep the generating ones' states)."""
        lib = self._lib
        n = 0
        for seq in decoding:
            n = self._add(seq, seq.todo, n, True)
            seq.todo = []
        for seq in sorted(reading, key=lambda s: s.last_used):
            if budget <= 0:
                seq.output_index = -1
                continue
            chunk = seq.todo[:budget]
            seq.todo = seq.todo[len(chunk):]
            budget -= len(chunk)
            self.prompt_tokens_read += len(chunk)
            n = self._add(seq, chunk, n, not seq.todo)
            if seq.todo:
                seq.output_index = -1
        if n == 0:
            return
        states = bool(self._n_embd) and not reading
        if states != self._states_on:
            lib.llama_set_embeddings(self._ctx, states)
            self._states_on = states
        self._batch.n_tokens = n
        code = lib.llama_decode(self._ctx, self._batch)
        if code != 0:
            raise EngineError(f"llama_decode failed with code {code}", code="ENGINE_DECODE_FAILED")
        for seq in decoding + reading:
            if seq.request is not None and seq.output_index >= 0:
                state = self._state(seq.output_index) if states else None
                self._advance(seq, int(self._sample(seq.sampler, self._ctx, seq.output_index)), state)

    def _state(self, index: int) -> bytes:
        """The hidden state at batch ``index`` of the last decode (float32 bytes, a copy)."""
        pointer = self._lib.llama_get_embeddings_ith(self._ctx, index)
        if not pointer:
            raise EngineError("llama.cpp returned no hidden state", code="ENGINE_DECODE_FAILED")
        return ctypes.string_at(pointer, 4 * self._n_embd)

    def _add(self, seq: _Sequence, tokens: list[int], n: int, wants_logits: bool) -> int:
        """Append ``tokens`` of ``seq`` to the batch at index ``n``; the last one outputs logits if asked."""
        batch = self._batch
        seq_id = seq.seq_id
        pos = len(seq.cached)
        for token in tokens:
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = 0
            pos += 1
            n += 1
        seq.cached.extend(tokens)
        if wants_logits and tokens:
            batch.logits[n - 1] = 1
            seq.output_index = n - 1
        return n

    def _advance(self, seq: _Sequence, token: int, state: bytes | None = None) -> None:
        """``token`` was sampled for ``seq`` (after the hidden ``state`` of the token before, when fingerprinting):
        hand out its text, or finish. An end-of-generation token ends the answer without its state, as the
        single engine's fingerprint has none for the last token."""
        request = seq.request
        assert request is not None and seq.stops is not None
        if self._is_end(token):
            self._finish(seq, "stop")
            return
        seq.generated += 1
        seq.held_tokens += 1
        if self._n_embd:
            if state is not None:
                seq.states.append(state)
            seq.fingerprinted.append(token)
        text = seq.stops.feed(seq.decoder.decode(self._piece(token)))
        if text:
            request.put(TokenPiece(text, seq.held_tokens))
            seq.held_tokens = 0
        if seq.stops.stopped:
            self._finish(seq, "stop")
        elif seq.generated >= request.params.max_tokens or len(seq.cached) >= self._context_window:
            self._finish(seq, "length")
        elif request.cancelled():
            self._finish(seq, "cancelled")
        else:
            seq.todo = [token]

    def _finish(self, seq: _Sequence, reason: FinishReason) -> None:
        """End ``seq``'s answer (its cache stays for reuse) and free the sequence."""
        request = seq.request
        assert request is not None and seq.stops is not None
        stops = seq.stops
        if not stops.stopped:
            tail = stops.feed(seq.decoder.decode(b"", final=True)) + stops.flush()
            if tail:
                request.put(TokenPiece(tail, seq.held_tokens))
        fingerprint = (fingerprint_states(stack_states(seq.states, self._n_embd), seq.fingerprinted)
                       if self._n_embd else None)
        seq.states = []
        self._release(seq, Finished(reason, seq.generated, fingerprint))

    def _release(self, seq: _Sequence, last: GenerationEvent | BaseException) -> None:
        """Hand ``seq``'s request its ``last`` event and free the sequence for the next request."""
        request = seq.request
        assert request is not None
        request.put(last)
        self._free_sampler(seq)
        seq.todo = []
        seq.output_index = -1
        with self._wake:
            seq.request = None

    def _free_sampler(self, seq: _Sequence) -> None:
        if seq.sampler is not None:
            self._lib.llama_sampler_free(seq.sampler)
            seq.sampler = None

    def _fail_all(self, exc: BaseException) -> None:
        """A decode failed: every answer in flight ends with ``exc``; the cache is cleared."""
        if not isinstance(exc, EngineError):
            exc = EngineError(f"batched generation failed: {type(exc).__name__}: {exc}")
        self._lib.llama_memory_clear(self._memory, True)
        for seq in self._sequences:
            seq.cached.clear()
            if seq.request is not None:
                self._release(seq, exc)


class _Slot:
    """One seat in the batch for the node's engine pool: generation goes to the shared engine."""

    def __init__(self, engine: BatchingEngine) -> None:
        self._engine = engine

    @property
    def model_id(self) -> str:
        return self._engine.model_id

    @property
    def context_window(self) -> int:
        return self._engine.context_window

    def count_tokens(self, text: str) -> int:
        return self._engine.count_tokens(text)

    def generate(
        self, prompt: str, params: GenerationParams, cancelled: Callable[[], bool]
    ) -> Iterator[GenerationEvent]:
        return self._engine.generate(prompt, params, cancelled)

    def submit(self, prompt: str, params: GenerationParams, cancelled: Callable[[], bool], put: Sink) -> None:
        self._engine.submit(prompt, params, cancelled, put)

    def close(self) -> None:
        self._engine.close()


def _shared_start(cached: list[int], prompt: list[int]) -> int:
    """How many of ``prompt``'s tokens a sequence holding ``cached`` already has; a lone BOS does not count, so
    a prompt that shares nothing more goes to the least recently used sequence and leaves the others' caches."""
    shared = _common_prefix(cached, prompt)
    return shared if shared > 1 else 0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _sample_holding_the_gil(lib: Any) -> Callable[[Any, Any, int], int]:
    """``llama_sampler_sample`` called without releasing the GIL.

    Sampling one sequence takes microseconds; ctypes releases the GIL around every call, and taking it back
    can wait for whatever thread holds it (the event loop, for up to the 5 ms switch interval), once per
    sequence per step. Only ``llama_decode`` needs to let other threads run.
    """
    import ctypes

    from llama_cpp import llama_cpp as bindings

    function = ctypes.PyDLL(bindings._lib._name).llama_sampler_sample
    function.argtypes = [lib.llama_sampler_p_ctypes, lib.llama_context_p_ctypes, ctypes.c_int32]
    function.restype = ctypes.c_int32
    return function


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise EngineError(
            "the llama.cpp engine is not installed: pip install 'fabstir[llama]'", code="ENGINE_NOT_INSTALLED"
        ) from None
    return llama_cpp


def _load(lib: Any, path: Path, n_ctx: int, sequences: int, threads: int, flash_attention: bool) -> tuple[Any, Any]:
    """The model (``llama-cpp-python``'s wrapper, for its tokenizer) and a context with a unified KV cache."""
    from llama_cpp._internals import LlamaModel
    from llama_cpp._logger import set_verbose
    from llama_cpp._utils import suppress_stdout_stderr

    set_verbose(False)
    lib.llama_backend_init()
    try:
        model: Any = LlamaModel(path_model=str(path), params=lib.llama_model_default_params(), verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise EngineError(f"could not load model {path}: {exc}", code="MODEL_LOAD_FAILED") from None
    params = lib.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = BATCH_TOKENS
    params.n_seq_max = sequences
    params.kv_unified = True
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = (lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention
                              else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    with suppress_stdout_stderr(disable=False):
        ctx = lib.llama_init_from_model(model.model, params)
    if not ctx:
        model.close()
        raise EngineError(f"could not create a llama.cpp context for {path} ({n_ctx} tokens, {sequences} "
                          "sequences)", code="MODEL_LOAD_FAILED")
    return model, ctx

