"""Issue 14 P2: hosts that secretly serve another model, another quantization or another prompt are caught on
every one of 50 answers; honest hosts with 1, 2 and 4 threads never are.

The named model is stories260K (skipped, with the reason, without ../shared/models) and, everywhere, the
suite's own tiny random-weight GGUF (seed 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir.fingerprints import Verifier
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
