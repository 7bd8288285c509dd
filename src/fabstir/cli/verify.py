"""``fabstir verify FILE --model PATH``: a validator's check that an answer came from the named model.

FILE is an answer record (``fabstir.sdk.verification.save_record``: the rendered prompt, the answer and the
host's signed receipt with its activation fingerprint). Exit codes: 0 the answer matches the model, 3 the host
is caught (the output is the evidence: the signed receipt and what the model recomputes instead), 1 the record
cannot be checked (coded error), 2 a usage error.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

__all__ = ["CAUGHT", "register", "run_verify"]

CAUGHT = 3
"""Exit code of a check that caught the host."""


def register(app: typer.Typer) -> None:
    app.command("verify", help="check that an answer came from the named model (activation fingerprint); "
                               "exit 0 honest, 3 caught")(verify)


def verify(
    record: Annotated[str, typer.Argument(metavar="FILE", help="answer record (JSON: prompt, answer, receipt)")],
    model: Annotated[str, typer.Option(metavar="PATH", help="GGUF file of the model the job names")],
    threads: Annotated[Optional[int], typer.Option(min=1, help="llama.cpp threads (default: all cores)")] = None,
    key: Annotated[Optional[str], typer.Option(metavar="HEX", help="the host's published Ed25519 key: the "
                                                                   "receipt must be signed by it")] = None,
    json: Annotated[bool, typer.Option("--json", help="print JSON (one line)")] = False,
) -> int:
    return run_verify(record, model=model, threads=threads, key=key, as_json=json)


def run_verify(path: str, *, model: str, threads: int | None, key: str | None, as_json: bool) -> int:
    from fabstir.cli.output import print_json
    from fabstir.fingerprints import Verifier
    from fabstir.sdk.verification import load_record, verify_record

    record = load_record(path)
    with Verifier(model, threads=threads) as verifier:
        verdict = verify_record(verifier, record, expected_key=key)
    result: dict[str, Any] = {"honest": verdict.honest, "reason": verdict.reason, "model": model,
                              "chunks": [c.to_json() for c in verdict.chunks]}
    if not verdict.honest:
        result["evidence"] = {"receipt": record["receipt"], "prompt": record["prompt"], "answer": record["answer"]}
    if as_json:
        print_json(result)
    elif verdict.honest:
        print(f"honest: the answer's fingerprint matches {model} ({len(verdict.chunks)} chunk(s) checked)")
    else:
        print(f"CAUGHT: {verdict.reason}")
        for chunk in verdict.chunks:
            if not chunk.passed:
                print(f"  chunk {chunk.index}: overlap {chunk.overlap:.3f}, exponent mismatches "
                      f"{chunk.exponent_mismatches:.3f}, mantissa error {chunk.mantissa_error:.2f} ulp")
    return 0 if verdict.honest else CAUGHT
