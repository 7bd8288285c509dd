"""Comparing a committed fingerprint with recomputed hidden states, within tolerances.

Per chunk, over the committed (claimed) top-k indices ``I``:

- ``overlap``: the share of ``I`` that is also in the top-k of the recomputed chunk;
- ``exponent_mismatches``: the share of ``I`` whose claimed fp16 value differs in sign or exponent from the
  recomputed value rounded to fp16;
- ``mantissa_error``: the mean absolute difference of the 10-bit mantissas (fp16 ulps) where they agree.

A chunk passes when all three are within :class:`Tolerances`; an answer passes when every chunk does. The
defaults were chosen by measurement on f32 models (docs/proofs.md, P2): honest hosts (1, 2, 4 threads;
token-by-token decoding against a batched prefill) stay at overlap 1.0, no exponent mismatch and a mean
mantissa error under 0.4 ulp; stories260K at q8_0 sits near 10 ulp, at q4_0 near 100, another prompt at 4 or
more. Quantized named models need wider ones, measured on the model (:mod:`fabstir.fingerprints.calibrate`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from fabstir.fingerprints.scheme import Fingerprint, top_k_of

__all__ = ["ChunkCheck", "Tolerances", "Verdict", "compare"]


@dataclasses.dataclass(frozen=True, slots=True)
class Tolerances:
    """The largest deviation an honest host may show, per chunk."""

    min_overlap: float = 0.95
    max_exponent_mismatches: float = 0.02
    max_mantissa_error: float = 1.5


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkCheck:
    """The comparison of one chunk."""

    index: int
    overlap: float
    exponent_mismatches: float
    mantissa_error: float
    passed: bool

    def to_json(self) -> dict[str, object]:
        return {"chunk": self.index, "overlap": round(self.overlap, 4),
                "exponent_mismatches": round(self.exponent_mismatches, 4),
                "mantissa_error": round(self.mantissa_error, 3), "passed": self.passed}


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an answer's fingerprint matches the named model; ``reason`` says why not."""

    honest: bool
    reason: str
    chunks: tuple[ChunkCheck, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"honest": self.honest, "reason": self.reason, "chunks": [c.to_json() for c in self.chunks]}


def compare(fingerprint: Fingerprint, states: npt.NDArray[np.float32],
            tolerances: Tolerances = Tolerances()) -> Verdict:
    """Check ``fingerprint`` against recomputed ``states`` (at the positions of its tokens but the last)."""
    if states.shape != (max(0, len(fingerprint.tokens) - 1), fingerprint.n_embd):
        return Verdict(False, f"recomputed states {states.shape} do not fit the fingerprint "
                              f"({len(fingerprint.tokens)} tokens, {fingerprint.n_embd} wide)")
    checks = []
    for number, chunk in enumerate(fingerprint.chunks):
        start = number * fingerprint.chunk_tokens
        block = np.asarray(states[start:start + fingerprint.chunk_tokens], dtype=np.float32)
        checks.append(_check_chunk(number, chunk.indices, chunk.values, block, fingerprint.top_k, tolerances))
    failed = [c for c in checks if not c.passed]
    reason = "" if not failed else (f"{len(failed)} of {len(checks)} chunks differ from the named model "
                                    f"(first: chunk {failed[0].index})")
    return Verdict(not failed, reason, tuple(checks))


def _check_chunk(number: int, indices: npt.NDArray[np.int64], claimed: npt.NDArray[np.float16],
                 block: npt.NDArray[np.float32], top_k: int, tolerances: Tolerances) -> ChunkCheck:
    if len(indices) == 0:
        return ChunkCheck(number, 1.0, 0.0, 0.0, True)
    own = top_k_of(block, top_k)
    overlap = len(np.intersect1d(own, indices, assume_unique=True)) / len(indices)
    recomputed = block.reshape(-1)[indices].astype(np.float16).view(np.uint16).astype(np.int64)
    bits = claimed.astype(np.float16).view(np.uint16).astype(np.int64)
    same_exponent = (recomputed >> 10) == (bits >> 10)  # sign and exponent
    mismatches = 1.0 - float(np.mean(same_exponent))
    mantissa = np.abs((recomputed & 0x3FF) - (bits & 0x3FF))[same_exponent]
    error = float(mantissa.mean()) if mantissa.size else float("inf")
    passed = (overlap >= tolerances.min_overlap and mismatches <= tolerances.max_exponent_mismatches
              and error <= tolerances.max_mantissa_error)
    return ChunkCheck(number, overlap, mismatches, error, passed)
