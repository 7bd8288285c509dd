"""``proofs``: what proving what was served costs, and whether it catches cheats (issue 14).

The result is one JSON object merged from independent parts (:data:`PARTS`): each part is a function
``(settings, scratch) -> dict`` run in turn, so another kind of proof adds its function and keys without
touching the others.

``checkpoint_proofs`` (P3, EZKL checkpoint proofs verified on chain): ``keygen_s``, ``prove_s``,
``verify_local_s``, ``proof_bytes``, ``calldata_bytes``, ``verify_onchain_gas``, ``halo2_verify_gas`` (see
``proofs_zk.py``).

``fingerprints`` (P2, activation fingerprints):

- ``fingerprint_overhead``: the median tokens/s of a llama.cpp engine that fingerprints (hidden states read
  while generating) over the same engine's without, over ``runs`` answers of ``max_tokens`` tokens each per
  side in ABBA order (target >= 0.97). ``fingerprint_overhead_prefill`` measures the alternative the same
  way: no states while generating, and one prefill pass over prompt + answer on a second (embeddings) context
  after each answer.
- ``fingerprint_overhead_batching``: the same for the continuous-batching engine (``llama-batch``): the median
  tokens/s of one ``BatchingEngine`` (4 sequences) that fingerprints over one that does not, each run being 4
  answers of ``max_tokens`` generated together, ABBA.
- ``verify_cost_ratio``: the time to verify ``runs`` fingerprinted answers (one prefill of prompt + answer on
  the verifier's context, top-k and comparison; the verifier's calibration, once per model, not counted) over
  the time it took to generate them (target <= 0.10). Nothing runs between the answers, nor between the
  checks, so neither pollutes the other's caches.
- ``caught`` / ``cheating_answers`` and ``false_alarms`` / ``honest_answers`` over the P2 test set: hosts
  serving a random-weight GGUF, the named model at q8_0 and q4_0, and the named model with a secret system
  prompt (each ``proofs_answers`` answers), and honest hosts with 1, 2 and 4 threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import Settings, log
from fabstir.fingerprints import Fingerprint, PrefillStates, Verifier
from fabstir.node.engines.base import Finished, GenerationParams, TokenPiece
from fabstir.node.engines.batching import BatchingEngine
from fabstir.node.engines.llama import LlamaCppEngine
from fabstir.testing.substitution import quantize_gguf, run_host
from fabstir.testing.tiny_gguf import write_tiny_gguf
from proofs_zk import measure_checkpoint_proofs

Part = Callable[[Settings, Path], dict[str, object]]

SECRET_SYSTEM = "You are a pirate and you always talk about treasure. "


def measure_fingerprints(settings: Settings, scratch: Path, answers: int = 50) -> dict[str, object]:
    """The P2 keys (see the module docstring)."""
    return {**_overhead(settings), **_detection(settings, scratch, answers)}


PARTS: dict[str, Part] = {"fingerprints": measure_fingerprints, "checkpoint_proofs": measure_checkpoint_proofs}
"""Every part of the ``proofs`` benchmark, in the order they run."""


async def run_proofs(settings: Settings, scratch: Path, answers: int = 50) -> dict[str, object]:
    """Run every part and merge their keys (a key measured twice fails the benchmark)."""
    merged: dict[str, object] = {}
    for name, part in PARTS.items():
        log(f"proofs: {name}")
        if part is measure_fingerprints:
            result = await asyncio.to_thread(measure_fingerprints, settings, scratch, answers)
        else:
            result = await asyncio.to_thread(part, settings, scratch)
        clash = merged.keys() & result.keys()
        if clash:
            raise RuntimeError(f"proofs parts measure the same keys: {sorted(clash)}")
        merged.update(result)
    return {**merged, **settings.model_info()}


def _generate(engine: LlamaCppEngine, prompt: str, params: GenerationParams) -> tuple[str, Finished, float]:
    started = time.perf_counter()
    events = list(engine.generate(prompt, params, lambda: False))
    seconds = time.perf_counter() - started
    finished = events[-1]
    assert isinstance(finished, Finished)
    return "".join(e.text for e in events if isinstance(e, TokenPiece)), finished, seconds


def _overhead(settings: Settings) -> dict[str, object]:
    log(f"fingerprint overhead: {settings.runs} answers of {settings.max_tokens} tokens per side, ABBA")
    kwargs = {"context_window": settings.context_window, "threads": settings.threads}
    plain = LlamaCppEngine(settings.model, fingerprints=False, **kwargs)
    printing = LlamaCppEngine(settings.model, fingerprints=True, **kwargs)
    prefill = PrefillStates(settings.model, context_window=settings.context_window, threads=settings.threads)
    params = GenerationParams(max_tokens=settings.max_tokens, temperature=0.8)
    prompt = settings.prompt
    prompt_tokens = prefill.tokenize(prompt)
    answers: list[tuple[str, Fingerprint, float]] = []

    def live() -> float:
        text, finished, took = _generate(printing, prompt, params)
        assert isinstance(finished.fingerprint, Fingerprint)
        answers.append((text, finished.fingerprint, took))
        return finished.completion_tokens / took

    def without() -> float:
        _, finished, took = _generate(plain, prompt, params)
        return finished.completion_tokens / took

    def after() -> float:  # the alternative: no states while generating, one prefill pass after the answer
        text, finished, took = _generate(plain, prompt, params)
        started = time.perf_counter()
        prefill.answer_states(prompt_tokens, list(prefill.llama.tokenize(text.encode(), add_bos=False)))
        return finished.completion_tokens / (took + time.perf_counter() - started)

    try:
        live_rate, plain_rate = _abba(live, without, settings)
        answers.clear()
        after_rate, plain_rate_2 = _abba(after, without, settings)
        _abba(live, live, dataclasses.replace(settings, warmup=0))  # answers to verify, nothing else between
    finally:
        for closing in (plain, printing, prefill):
            closing.close()
    batching_ratio = _batching_overhead(settings, params)
    log(f"verifying {len(answers)} answers")
    with Verifier(settings.model, threads=settings.threads) as verifier:
        started = time.perf_counter()
        verdicts = [verifier.check(prompt, fingerprint, text) for text, fingerprint, _ in answers]
        verify_seconds = time.perf_counter() - started
    if not all(v.honest for v in verdicts):
        raise RuntimeError(f"an honest answer was flagged: {[v.reason for v in verdicts if not v.honest][0]}")
    sizes = [len(f.to_bytes()) * 32 / max(1, len(f.tokens) - 1) for _, f, _ in answers]
    return {
        "fingerprint_overhead": round(live_rate / plain_rate, 4),
        "fingerprint_overhead_prefill": round(after_rate / plain_rate_2, 4),
        "fingerprint_overhead_batching": round(batching_ratio, 4),
        "verify_cost_ratio": round(verify_seconds / sum(took for _, _, took in answers), 4),
        "tokens_per_s_plain": round(plain_rate, 1),
        "tokens_per_s_fingerprinted": round(live_rate, 1),
        "fingerprint_bytes_per_32_tokens": round(sum(sizes) / len(sizes), 1),
        "runs": settings.runs,
        "max_tokens": settings.max_tokens,
    }


def _batching_overhead(settings: Settings, params: GenerationParams, sequences: int = 4) -> float:
    """Tokens/s of a fingerprinting batching engine over a plain one, ``sequences`` answers at a time, ABBA."""
    log(f"fingerprint overhead, batching engine: {sequences} answers at a time, {settings.runs} runs per side")
    kwargs = {"context_window": settings.context_window, "sequences": sequences, "threads": settings.threads}
    engines = [BatchingEngine(settings.model, fingerprints=on, **kwargs) for on in (True, False)]

    def together(engine: BatchingEngine) -> float:
        tokens = [0] * sequences

        def answer(index: int) -> None:
            for event in engine.generate(settings.prompt, dataclasses.replace(params, seed=index), lambda: False):
                if isinstance(event, Finished):
                    tokens[index] = event.completion_tokens

        started = time.perf_counter()
        workers = [threading.Thread(target=answer, args=(i,)) for i in range(sequences)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if not all(tokens):
            raise RuntimeError("a batched answer produced no tokens")
        return sum(tokens) / (time.perf_counter() - started)

    try:
        with_states, without = _abba(lambda: together(engines[0]), lambda: together(engines[1]), settings)
    finally:
        for engine in engines:
            engine.close()
    return with_states / without


def _abba(first: Callable[[], float], second: Callable[[], float], settings: Settings) -> tuple[float, float]:
    """Median tokens/s of two sides run in ABBA order (warm-ups first, unmeasured)."""
    rates: tuple[list[float], list[float]] = ([], [])
    for number in range(settings.warmup + settings.runs):
        pair = ((0, first), (1, second)) if number % 2 == 0 else ((1, second), (0, first))
        for side, run in pair:
            rate = run()
            if number >= settings.warmup:
                rates[side].append(rate)
    return statistics.median(rates[0]), statistics.median(rates[1])


def _detection(settings: Settings, scratch: Path, answers: int) -> dict[str, object]:
    named = settings.model
    cheats = {
        "random_weights": write_tiny_gguf(scratch / "random.gguf", seed=7, context_length=512),
        "q8_0": quantize_gguf(named, scratch / "named-q8_0.gguf", "q8_0"),
        "q4_0": quantize_gguf(named, scratch / "named-q4_0.gguf", "q4_0"),
    }
    caught: dict[str, int] = {}
    alarms: dict[str, int] = {}
    with Verifier(named, threads=1) as verifier:
        for name, path in cheats.items():
            log(f"cheating host: {name}, {answers} answers")
            caught[name] = run_host(verifier, path, answers=answers).flagged
        log(f"cheating host: secret system prompt, {answers} answers")
        caught["system_prompt"] = run_host(verifier, named, answers=answers, system_prefix=SECRET_SYSTEM).flagged
        for threads in (1, 2, 4):
            log(f"honest host: {threads} threads, {answers} answers")
            alarms[f"threads_{threads}"] = run_host(verifier, named, answers=answers, threads=threads).flagged
    return {
        "caught": sum(caught.values()),
        "cheating_answers": answers * len(caught),
        "false_alarms": sum(alarms.values()),
        "honest_answers": answers * len(alarms),
        "caught_by_cheat": caught,
        "false_alarms_by_host": alarms,
    }
