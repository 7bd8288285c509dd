"""Activation fingerprints: catch a host that serves another model than the one its job names.

In the spirit of TOPLOC (ICML 2025): a host commits, in each signed receipt, the top-k of the model's final
hidden states per 32 generated tokens (:mod:`~fabstir.fingerprints.scheme`); anyone holding the named model
recomputes those states with one prefill pass over prompt + answer
(:mod:`~fabstir.fingerprints.llama_states`) and compares within tolerances
(:mod:`~fabstir.fingerprints.check`) that absorb thread counts and batching but not another model, another
quantization or another prompt. :func:`verify_answer` does all of it for one answer and its receipt.
See docs/proofs.md (P2).
"""

from __future__ import annotations

from fabstir.fingerprints.calibrate import CALIBRATION_PROMPTS, calibrate
from fabstir.fingerprints.check import ChunkCheck, Tolerances, Verdict, compare
from fabstir.fingerprints.llama_states import PrefillStates, last_state, live_states, stack_states, state_width
from fabstir.fingerprints.scheme import CHUNK_TOKENS, TOP_K, Chunk, Fingerprint, fingerprint_states, top_k_of
from fabstir.fingerprints.verify import Verifier, verify_answer

__all__ = [
    "CALIBRATION_PROMPTS",
    "CHUNK_TOKENS",
    "TOP_K",
    "Chunk",
    "ChunkCheck",
    "Fingerprint",
    "PrefillStates",
    "Tolerances",
    "Verdict",
    "Verifier",
    "calibrate",
    "compare",
    "fingerprint_states",
    "last_state",
    "live_states",
    "stack_states",
    "state_width",
    "top_k_of",
    "verify_answer",
]
