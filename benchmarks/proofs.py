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
  side, the sides taking turns in rotating order (target >= 0.97). ``fingerprint_overhead_prefill`` measures the alternative: no
  states while generating, and one prefill pass over prompt + answer on a second (embeddings) context after
  each answer.
- ``verify_cost_ratio``: the time to verify those answers (one prefill of prompt + answer on the verifier's
  context, top-k and comparison) over the time to generate them (target <= 0.10).
- ``caught`` / ``cheating_answers`` and ``false_alarms`` / ``honest_answers`` over the P2 test set: hosts
  serving a random-weight GGUF, the named model at q8_0 and q4_0, and the named model with a secret system
  prompt (each ``proofs_answers`` answers), and honest hosts with 1, 2 and 4 threads.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from common import Settings, log
from fabstir.fingerprints import Fingerprint, PrefillStates, Verifier
from fabstir.node.engines.base import Finished, GenerationParams, TokenPiece
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
    verifier = Verifier(settings.model, threads=settings.threads)
    params = GenerationParams(max_tokens=settings.max_tokens, temperature=0.8)
    sides = ("plain", "live", "prefill")
    rates: dict[str, list[float]] = {side: [] for side in sides}
    seconds = {side: 0.0 for side in sides}
    verify_seconds = 0.0
    sizes: list[float] = []
    try:
        for number in range(settings.warmup + settings.runs):
            measured = number >= settings.warmup
            order = sides[number % 3:] + sides[:number % 3]  # each side first, second and last equally often
            for side in order:
                engine = printing if side == "live" else plain
                text, finished, took = _generate(engine, settings.prompt, params)
                if side == "prefill":  # the alternative: states by one prefill pass after the answer
                    started = time.perf_counter()
                    answer = list(prefill.llama.tokenize(text.encode(), add_bos=False, special=True))
                    prefill.answer_states(prefill.tokenize(settings.prompt), answer)
                    took += time.perf_counter() - started
                if measured:
                    seconds[side] += took
                    rates[side].append(finished.completion_tokens / took)
                if side == "live" and measured:
                    fingerprint = finished.fingerprint
                    assert isinstance(fingerprint, Fingerprint)
                    started = time.perf_counter()
                    verdict = verifier.check(settings.prompt, fingerprint, text)
                    verify_seconds += time.perf_counter() - started
                    if not verdict.honest:
                        raise RuntimeError(f"an honest answer was flagged: {verdict.reason}")
                    sizes.append(len(fingerprint.to_bytes()) * 32 / max(1, len(fingerprint.tokens) - 1))
    finally:
        for closing in (plain, printing, prefill, verifier):
            closing.close()
    rate = {side: statistics.median(rates[side]) for side in sides}  # medians: robust to the load's spikes
    return {
        "fingerprint_overhead": round(rate["live"] / rate["plain"], 4),
        "fingerprint_overhead_prefill": round(rate["prefill"] / rate["plain"], 4),
        "verify_cost_ratio": round(verify_seconds / seconds["live"], 4),
        "tokens_per_s_plain": round(rate["plain"], 1),
        "tokens_per_s_fingerprinted": round(rate["live"], 1),
        "fingerprint_bytes_per_32_tokens": round(sum(sizes) / len(sizes), 1),
        "runs": settings.runs,
        "max_tokens": settings.max_tokens,
    }


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
