"""Honest and cheating hosts for model-substitution tests and benchmarks (issue 14, P2).

A host here is a llama.cpp engine that fingerprints what it generates; a cheat serves another GGUF (other
weights, or the named model at another quantization) or prepends a system prompt the client did not send.
:func:`run_host` generates answers with one and checks every fingerprint with a :class:`Verifier` of the
named model, as a client or validator would.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from pathlib import Path

from fabstir.fingerprints import Verdict, Verifier
from fabstir.node.engines.base import Finished, GenerationParams, TokenPiece
from fabstir.node.engines.llama import LlamaCppEngine

__all__ = ["PROMPTS", "HostRun", "quantize_gguf", "run_host"]

PROMPTS = (
    "Once upon a time, there was a little girl",
    "One day, a boy named Tom went to the park",
    "The cat sat on the mat and",
    "Lily and her mom went to the store",
    "There was a big tree in the forest",
)

_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "f16": "LLAMA_FTYPE_MOSTLY_F16"}


def quantize_gguf(source: str | os.PathLike[str], target: str | os.PathLike[str], kind: str) -> Path:
    """Write ``source`` quantized to ``kind`` (``q8_0``, ``q4_0`` or ``f16``) at ``target``, with llama.cpp."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPES[kind])
    params.nthread = 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {kind}")
    return Path(target)


@dataclasses.dataclass(frozen=True, slots=True)
class HostRun:
    """One host's answers and the verdict on each; ``seconds`` is the time generating them."""

    verdicts: tuple[Verdict, ...]
    seconds: float
    tokens: int

    @property
    def flagged(self) -> int:
        return sum(not v.honest for v in self.verdicts)


def run_host(verifier: Verifier, host_model: str | os.PathLike[str], *, answers: int, threads: int = 1,
             max_tokens: int = 40, system_prefix: str = "", fingerprints: bool = True) -> HostRun:
    """Generate ``answers`` answers (prompts from :data:`PROMPTS`, seeds 0, 1, ...) with ``host_model``,
    each from ``system_prefix + prompt``, and check each against ``verifier`` with the plain prompt."""
    import time

    engine = LlamaCppEngine(host_model, context_window=512, threads=threads, fingerprints=fingerprints)
    verdicts: list[Verdict] = []
    seconds = 0.0
    tokens = 0
    try:
        for number in range(answers):
            prompt = PROMPTS[number % len(PROMPTS)]
            params = GenerationParams(max_tokens=max_tokens, temperature=0.8, seed=number)
            started = time.perf_counter()
            events = list(engine.generate(system_prefix + prompt, params, lambda: False))
            seconds += time.perf_counter() - started
            text = "".join(e.text for e in events if isinstance(e, TokenPiece))
            finished = events[-1]
            assert isinstance(finished, Finished)
            tokens += finished.completion_tokens
            if finished.fingerprint is not None:
                verdicts.append(verifier.check(prompt, finished.fingerprint, text))
    finally:
        engine.close()
    return HostRun(tuple(verdicts), seconds, tokens)
