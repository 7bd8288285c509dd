"""Issue 14 P2: hosts that secretly serve another model, another quantization or another prompt are caught on
every one of 50 answers; honest hosts with 1, 2 and 4 threads never are.

The named model is stories260K (skipped, with the reason, without ../shared/models) and, everywhere, the
suite's own tiny random-weight GGUF (seed 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir.fingerprints import Tolerances, Verifier
from fabstir.testing.substitution import quantize_gguf, run_host
from fabstir.testing.tiny_gguf import write_tiny_gguf

ANSWERS = 50
SYSTEM = "You are a pirate and you always talk about treasure. "


@pytest.fixture(scope="module", params=["stories260K", "tiny"])
def named(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "tiny":
        return write_tiny_gguf(tmp_path_factory.mktemp("named") / "tiny.gguf", seed=0, context_length=512)
    stories: Path = request.getfixturevalue("stories_model")
    return stories


@pytest.fixture(scope="module")
def verifier(named: Path) -> Iterator[Verifier]:
    with Verifier(named, threads=1) as opened:
        yield opened


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_an_honest_host_is_never_flagged(verifier: Verifier, named: Path, threads: int) -> None:
    run = run_host(verifier, named, answers=ANSWERS, threads=threads)
    assert len(run.verdicts) == ANSWERS
    assert run.flagged == 0, [v.to_json() for v in run.verdicts if not v.honest][:2]
    assert all(c.mantissa_error <= 1.0 for v in run.verdicts for c in v.chunks)  # a margin below the tolerance


def test_a_host_serving_a_random_weight_model_is_always_caught(verifier: Verifier, named: Path,
                                                               tmp_path: Path) -> None:
    other = write_tiny_gguf(tmp_path / "random.gguf", seed=7, context_length=512)
    run = run_host(verifier, other, answers=ANSWERS)
    assert run.flagged == ANSWERS


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_a_host_serving_another_quantization_is_always_caught(verifier: Verifier, named: Path, tmp_path: Path,
                                                              kind: str) -> None:
    quantized = quantize_gguf(named, tmp_path / f"named-{kind}.gguf", kind)
    assert quantized.stat().st_size < named.stat().st_size
    run = run_host(verifier, quantized, answers=ANSWERS)
    assert run.flagged == ANSWERS
    assert all("chunks differ" in v.reason for v in run.verdicts)  # caught by the fingerprint itself


def test_a_host_with_a_secret_system_prompt_is_always_caught(verifier: Verifier, named: Path) -> None:
    run = run_host(verifier, named, answers=ANSWERS, system_prefix=SYSTEM)
    assert run.flagged == ANSWERS
    assert all("chunks differ" in v.reason for v in run.verdicts)


def test_a_quantized_named_model_gets_measured_tolerances(named: Path, tmp_path: Path) -> None:
    """A q8_0 model's honest hosts stray further from the batched prefill (quantized batched kernels): the
    verifier measures that on the model itself, still passes honest hosts and still catches q4_0."""
    named_q8 = quantize_gguf(named, tmp_path / "named-q8_0.gguf", "q8_0")
    with Verifier(named_q8, threads=1) as verifier:
        assert verifier.tolerances.max_mantissa_error >= Tolerances().max_mantissa_error
        assert verifier.tolerances.min_overlap <= Tolerances().min_overlap
        assert run_host(verifier, named_q8, answers=20, threads=2).flagged == 0
        cheaper = quantize_gguf(named, tmp_path / "named-q4_0.gguf", "q4_0")
        assert run_host(verifier, cheaper, answers=20).flagged == 20
