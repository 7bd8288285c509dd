"""The continuous-batching engine (:mod:`fabstir.node.engines.batching`) against the one-context engine.

Real llama.cpp over the suite's own tiny random-weight model (and stories260K where ../shared/models exists).
Greedy answers must be the single engine's text, token counts and finish reasons, whether a request runs
alone or among many; a cancelled sequence is freed for the next request at once while the others go on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir.errors import EngineError
from fabstir.fingerprints import Verifier
from fabstir.node.engines.base import Finished, GenerationEvent, GenerationParams, TokenPiece
from fabstir.node.engines.batching import BatchingEngine
from fabstir.node.engines.llama import LlamaCppEngine
from fabstir.testing.tiny_gguf import write_tiny_gguf

PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the park", "One day", "The sun was",
           "A big red ball", "Tom said", "She was happy because", "Once upon a time there was"]
GREEDY = GenerationParams(max_tokens=24, temperature=0.0, repeat_penalty=1.1)

Outcome = tuple[str, str, int]
"""Text, finish reason and completion tokens of one answer."""


def outcome(events: Iterator[GenerationEvent]) -> Outcome:
    parts: list[str] = []
    finished = None
    for event in events:
        if isinstance(event, TokenPiece):
            parts.append(event.text)
        else:
            finished = event
    assert isinstance(finished, Finished)
    return "".join(parts), finished.finish_reason, finished.completion_tokens


def never() -> bool:
    return False


@pytest.fixture(scope="module", params=["tiny", "stories"])
def model(request: pytest.FixtureRequest) -> Path:
    path: Path = request.getfixturevalue("tiny_model" if request.param == "tiny" else "stories_model")
    return path


@pytest.fixture(scope="module")
def single(model: Path) -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(model, context_window=512, threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def batching(model: Path) -> Iterator[BatchingEngine]:
    engine = BatchingEngine(model, context_window=512, sequences=4, threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def expected(single: LlamaCppEngine) -> dict[str, Outcome]:
    return {prompt: outcome(single.generate(prompt, GREEDY, never)) for prompt in PROMPTS}


def run_all(engine: BatchingEngine, jobs: list[tuple[str, GenerationParams]]) -> list[Outcome]:
    """Every job on its own thread at once (more jobs than sequences queue for one)."""
    results: list[Outcome | BaseException | None] = [None] * len(jobs)

    def work(index: int) -> None:
        prompt, params = jobs[index]
        try:
            results[index] = outcome(engine.generate(prompt, params, never))
        except BaseException as exc:  # reported below
            results[index] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a generation never finished"
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def test_alone_greedy_is_the_single_engines_answer(batching: BatchingEngine, expected: dict[str, Outcome]) -> None:
    for prompt in PROMPTS[:3]:
        assert outcome(batching.generate(prompt, GREEDY, never)) == expected[prompt]
    assert expected[PROMPTS[0]][2] > 0


def test_many_at_once_each_get_their_own_answer(batching: BatchingEngine, expected: dict[str, Outcome]) -> None:
    jobs = [(prompt, GREEDY) for prompt in PROMPTS + PROMPTS[:3]]  # 12 answers over 4 sequences
    results = run_all(batching, jobs)
    assert results == [expected[prompt] for prompt, _ in jobs]
    assert len({text for text, _, _ in results}) > 1, "the prompts must give different answers"


def test_seeded_sampling_is_the_single_engines_draw(single: LlamaCppEngine, batching: BatchingEngine) -> None:
    params = GenerationParams(max_tokens=20, temperature=0.8, top_p=0.9, seed=11)
    want = outcome(single.generate(PROMPTS[1], params, never))
    got = run_all(batching, [(PROMPTS[1], params), (PROMPTS[2], GREEDY), (PROMPTS[3], GREEDY)])
    assert got[0] == want


def test_stops_apply_per_sequence(single: LlamaCppEngine, batching: BatchingEngine,
                                  expected: dict[str, Outcome]) -> None:
    jobs = []
    for prompt in PROMPTS[:4]:
        text = expected[prompt][0]
        stop = text[len(text) // 2: len(text) // 2 + 2] or "x"  # a stop somewhere in this answer only
        jobs.append((prompt, GenerationParams(max_tokens=24, temperature=0.0, repeat_penalty=1.1, stop=(stop,))))
    want = [outcome(single.generate(prompt, params, never)) for prompt, params in jobs]
    assert any(reason == "stop" for _, reason, _ in want)
    assert run_all(batching, jobs) == want


def test_continuation_is_the_rest_of_the_answer(single: LlamaCppEngine, batching: BatchingEngine) -> None:
    prompt = PROMPTS[0]
    whole = outcome(single.generate(prompt, GenerationParams(max_tokens=30, temperature=0.0), never))
    pieces = [e.text for e in single.generate(prompt, GenerationParams(max_tokens=30, temperature=0.0), never)
              if isinstance(e, TokenPiece)]
    cut = len(pieces) // 2
    prefix = "".join(pieces[:cut])
    params = GenerationParams(max_tokens=30, temperature=0.0, answer_prefix=prefix)
    rest_single = outcome(single.generate(prompt + prefix, params, never))
    rest_batch = run_all(batching, [(prompt + prefix, params), (PROMPTS[2], GREEDY)])[0]
    assert rest_batch == rest_single
    assert whole[0].startswith(prefix) and prefix


def test_cancel_frees_the_sequence_at_once_and_the_others_go_on(model: Path) -> None:
    engine = BatchingEngine(model, context_window=512, sequences=2, threads=1)
    try:
        long_params = GenerationParams(max_tokens=400, temperature=0.0, repeat_penalty=1.0)
        cancel = threading.Event()
        doomed = engine.generate(PROMPTS[0], long_params, cancel.is_set)
        survivor = engine.generate(PROMPTS[1], long_params, never)
        assert isinstance(next(doomed), TokenPiece)
        assert isinstance(next(survivor), TokenPiece)
        cancel.set()
        ended = [event for event in doomed if isinstance(event, Finished)]
        assert ended[0].finish_reason == "cancelled" and ended[0].completion_tokens < 400
        # both sequences were taken; the cancelled one is free again while the survivor still generates
        third = outcome(engine.generate(PROMPTS[2], GenerationParams(max_tokens=3, temperature=0.0), never))
        assert third[2] == 3
        rest = outcome(survivor)
        assert rest[1] == "length" and rest[2] == 400
    finally:
        engine.close()


def test_abandoned_generator_frees_its_sequence(model: Path) -> None:
    engine = BatchingEngine(model, context_window=512, sequences=1, threads=1)
    try:
        stream = engine.generate(PROMPTS[0], GenerationParams(max_tokens=400, temperature=0.0), never)
        next(stream)
        stream.close()  # type: ignore[attr-defined]  # the consumer went away without cancelling
        done = outcome(engine.generate(PROMPTS[1], GenerationParams(max_tokens=2, temperature=0.0), never))
        assert done[2] == 2
    finally:
        engine.close()


def test_a_session_turn_reuses_the_cached_prefix(model: Path, single: LlamaCppEngine) -> None:
    engine = BatchingEngine(model, context_window=512, sequences=2, threads=1)
    try:
        first = outcome(engine.generate(PROMPTS[0], GREEDY, never))
        follow_up = PROMPTS[0] + first[0] + " Then"
        reused = outcome(engine.generate(follow_up, GREEDY, never))
        cached = engine.cached_tokens()
        assert max(cached) >= engine.count_tokens(follow_up), "the next turn extends the first turn's sequence"
        assert min(cached) == 0, f"the next turn went to another sequence and read everything again: {cached}"
        assert reused == outcome(single.generate(follow_up, GREEDY, never))
        other = outcome(engine.generate(PROMPTS[3], GREEDY, never))  # no shared start: the free sequence
        assert sorted(engine.cached_tokens())[0] > 0 and other[2] > 0
    finally:
        engine.close()


def test_closed_engine_refuses_and_bad_settings_are_coded(model: Path) -> None:
    engine = BatchingEngine(model, context_window=64, sequences=1, threads=1)
    with pytest.raises(EngineError) as too_long:
        list(engine.generate("word " * 200, GREEDY, never))
    assert too_long.value.code == "PROMPT_TOO_LONG"
    engine.close()
    engine.close()  # twice is fine
    with pytest.raises(EngineError) as closed:
        list(engine.generate("hi", GREEDY, never))
    assert closed.value.code == "ENGINE_CLOSED"
    with pytest.raises(EngineError):
        BatchingEngine(model, sequences=0)


def test_slots_share_one_engine(batching: BatchingEngine, expected: dict[str, Outcome]) -> None:
    slots = batching.slots()
    assert len(slots) == batching.sequences == 4
    slot = slots[0]
    assert slot.model_id == batching.model_id and slot.context_window == 512
    assert slot.count_tokens("hello") == batching.count_tokens("hello")
    assert outcome(slot.generate(PROMPTS[0], GREEDY, never)) == expected[PROMPTS[0]]




def test_a_long_prompt_is_read_in_chunks_while_others_stream(model: Path) -> None:
    engine = BatchingEngine(model, context_window=512, sequences=2, threads=1, prefill_chunk=32)
    try:
        long_prompt = "the dog and the cat went out " * 6
        while engine.count_tokens(long_prompt) < 200:
            long_prompt += "and then they played "
        order: list[str] = []
        done = threading.Event()
        stream_done = threading.Event()

        def streaming(event: object) -> None:
            if isinstance(event, TokenPiece):
                order.append("a")
            elif isinstance(event, Finished):
                stream_done.set()

        def reader(event: object) -> None:
            if isinstance(event, (TokenPiece, Finished)):
                order.append("b")
                done.set()

        engine.submit(PROMPTS[0], GenerationParams(max_tokens=300, temperature=0.0), never, streaming)
        deadline = threading.Event()
        while "a" not in order and not deadline.wait(0.01):
            pass
        mark = len(order)
        engine.submit(long_prompt, GenerationParams(max_tokens=2, temperature=0.0), never, reader)
        assert done.wait(120), "the long prompt was never answered"
        while_reading = order[mark: order.index("b")]
        # 200+ prompt tokens in chunks of 32 take 7 steps, and the stream gets a token at each (read in one
        # step, the long prompt's first token would come with the stream's next one)
        assert while_reading.count("a") >= 4, order[:40]
        assert stream_done.wait(120)
    finally:
        engine.close()


def test_flash_attention_engine_answers(model: Path, expected: dict[str, Outcome]) -> None:
    engine = BatchingEngine(model, context_window=512, sequences=2, threads=1, flash_attention=True)
    try:
        text, reason, tokens = outcome(engine.generate(PROMPTS[0], GREEDY, never))
        assert tokens == expected[PROMPTS[0]][2] and reason == expected[PROMPTS[0]][1] and text
    finally:
        engine.close()


def finished_of(engine: BatchingEngine | LlamaCppEngine, prompt: str, params: GenerationParams) -> Finished:
    events = list(engine.generate(prompt, params, never))
    assert isinstance(events[-1], Finished)
    return events[-1]


def finished_together(engine: BatchingEngine, prompts: list[str]) -> list[Finished]:
    """The last event of each greedy answer to ``prompts``, all generated at once."""
    results: list[Finished | None] = [None] * len(prompts)

    def work(index: int) -> None:
        results[index] = finished_of(engine, prompts[index], GREEDY)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(result is not None for result in results), "an answer never finished"
    return results  # type: ignore[return-value]


def test_answers_decoded_together_carry_fingerprints_the_named_model_reproduces(
        model: Path, batching: BatchingEngine, single: LlamaCppEngine) -> None:
    """Each answer's fingerprint covers its own tokens (the single engine's, greedy) and passes the verifier's
    check, although the states came from batches of several sequences, some steps split around prompt chunks;
    the check fails against another prompt. Without fingerprints the engine makes none."""
    jobs = PROMPTS[:6]
    fingerprints = finished_together(batching, jobs)
    with Verifier(model, threads=1) as verifier:
        for prompt, finished in zip(jobs, fingerprints):
            assert finished.fingerprint is not None
            alone = finished_of(single, prompt, GREEDY).fingerprint
            assert alone is not None and finished.fingerprint.tokens == alone.tokens
            assert len(finished.fingerprint.tokens) == finished.completion_tokens
            verdict = verifier.check(prompt, finished.fingerprint)
            assert verdict.honest, verdict.to_json()
        assert not verifier.check("Another prompt entirely", fingerprints[0].fingerprint).honest
    plain = BatchingEngine(model, context_window=512, sequences=2, threads=1, fingerprints=False)
    try:
        assert finished_of(plain, PROMPTS[0], GREEDY).fingerprint is None
    finally:
        plain.close()


def test_an_answer_ended_by_the_model_has_no_state_for_its_end(tmp_path: Path) -> None:
    """An answer that ends with the end-of-sequence token (a tiny GGUF that emits it after 7-14 tokens) has a
    fingerprint of its tokens with one state fewer, as the single engine's, and it verifies."""
    model = write_tiny_gguf(tmp_path / "ends.gguf", seed=0, context_length=512, eos_weight=0.013)
    engine = BatchingEngine(model, context_window=512, sequences=3, threads=1)
    try:
        single = LlamaCppEngine(model, context_window=512, threads=1)
        results = finished_together(engine, PROMPTS[:3])
        with Verifier(model, threads=1) as verifier:
            for prompt, finished in zip(PROMPTS, results):
                assert finished.finish_reason == "stop" and finished.fingerprint is not None
                alone = finished_of(single, prompt, GREEDY)
                assert alone.finish_reason == "stop" and alone.fingerprint is not None
                assert finished.fingerprint.tokens == alone.fingerprint.tokens
                assert 2 <= finished.completion_tokens < GREEDY.max_tokens
                assert verifier.check(prompt, finished.fingerprint).honest
        single.close()
    finally:
        engine.close()


def test_a_prompt_shares_the_start_another_running_sequence_has_read(model: Path, single: LlamaCppEngine) -> None:
    """While one answer streams, a second request with the same long start reads only what differs: its
    sequence shares the first one's KV cells. The second answer is the single engine's; the first, stopped
    once the second is done, is the start of the single engine's."""
    engine = BatchingEngine(model, context_window=512, sequences=2, threads=1)
    try:
        start = "the dog and the cat went out to play in the park " * 4
        first_prompt, second_prompt = start + "Then", start + "After that"
        long = GenerationParams(max_tokens=400, temperature=0.0, repeat_penalty=1.1)
        first_events: list[object] = []
        first_token, stop_first, first_done = threading.Event(), threading.Event(), threading.Event()

        def first_sink(event: object) -> None:
            first_events.append(event)
            first_token.set()
            if isinstance(event, (Finished, BaseException)):
                first_done.set()

        engine.submit(first_prompt, long, stop_first.is_set, first_sink)
        assert first_token.wait(120), "the first answer never streamed"
        read_before = engine.prompt_tokens_read
        second = outcome(engine.generate(second_prompt, GREEDY, never))
        read_for_second = engine.prompt_tokens_read - read_before
        stop_first.set()
        assert first_done.wait(120)
        finished = first_events[-1]
        assert isinstance(finished, Finished) and finished.finish_reason == "cancelled", "it ran throughout"
        shared = engine.count_tokens(start) - 1
        assert shared > 40 and read_for_second <= engine.count_tokens(second_prompt) - shared + 1, read_for_second
        assert second == outcome(single.generate(second_prompt, GREEDY, never))
        text = "".join(e.text for e in first_events if isinstance(e, TokenPiece))
        assert single_text_starts_with(single, first_prompt, long, text)
    finally:
        engine.close()


def single_text_starts_with(single: LlamaCppEngine, prompt: str, params: GenerationParams, text: str) -> bool:
    """Whether the single engine's answer begins with ``text`` (a stopped answer is the start of the whole)."""
    return outcome(single.generate(prompt, params, never))[0].startswith(text)
