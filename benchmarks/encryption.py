"""``encryption``: the SDK's tokens/s with end-to-end encryption on vs off, against the same node.

One ``fabstir node serve`` subprocess (``--parallel 1``); the same SDK talks to it in plaintext
(``encryption=False``) and encrypted (``encryption=True``, trusting the key the node announces).
Two measurements per mode, each on a fresh session (connecting is not timed):

- ``first``: the session's first prompt (``max_tokens``). In encrypted mode it is sealed under the
  key of the init sent while connecting, so it shows the per-token cost only (a sealed chunk per
  token on the node, a decryption per chunk in the SDK).
- ``next``: after a 1-token first prompt, the measured second prompt (``max_tokens``). In encrypted
  mode it starts with a fresh ``encrypted_session_init`` (new session key; ECDH, signature, one round
  trip), as every prompt after the first does.

Repetitions alternate in ABBA order (plaintext, encrypted, encrypted, plaintext, ...) after warm-up
runs, and medians are reported; both modes must produce the same text.

Run: ``.venv/bin/python benchmarks/encryption.py [--runs 20] [--json]`` (same options as run.py's).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ModelMissingError,
    Sample,
    Settings,
    close_all,
    load_average,
    log,
    resolve_model,
    rounded,
    start_node,
    summarize,
    timed_prompt,
)
from fabstir.sdk import FabstirSDK, PromptOptions, Timeouts  # noqa: E402

MODES = ("plaintext", "encrypted")


async def encrypted_run(sdk: FabstirSDK, url: str, settings: Settings, *, encrypted: bool,
                        second: bool) -> Sample:
    """One timed prompt on a fresh session; ``second``: after a 1-token first prompt."""
    session_id = f"bench-e2e-{uuid.uuid4().hex[:12]}"
    await sdk.inference.connect_to_session(session_id, url, encryption=encrypted)
    if sdk.inference.is_encrypted(session_id) != encrypted:
        raise RuntimeError("the session is not in the requested mode")
    try:
        if second:
            await sdk.inference.send_prompt("The end.", PromptOptions(max_tokens=1, temperature=0.0),
                                            session_id=session_id)
        return await timed_prompt(sdk, session_id, settings)
    finally:
        await sdk.inference.close(session_id)


async def run_encryption(settings: Settings) -> dict[str, object]:
    """Measure and return the ``encryption`` JSON object."""
    node, url = await start_node(settings, parallel=1, threads=settings.threads)
    samples: dict[tuple[str, str], list[Sample]] = {(m, k): [] for m in MODES for k in ("first", "next")}
    timeouts = Timeouts(connect=10.0, handshake=10.0, first_token=settings.run_timeout,
                        between_frames=settings.run_timeout)
    try:
        async with FabstirSDK(timeouts=timeouts) as sdk:
            for number in range(settings.warmup + settings.runs):
                order = MODES if number % 2 == 0 else MODES[::-1]  # ABBA
                for kind in ("first", "next"):
                    for mode in order:
                        await asyncio.sleep(settings.settle)
                        sample = await encrypted_run(sdk, url, settings, encrypted=mode == "encrypted",
                                                     second=kind == "next")
                        if number >= settings.warmup:
                            samples[(mode, kind)].append(sample)
                node.check_alive()
                if number >= settings.warmup:
                    last = {key: values[-1].tokens_per_s for key, values in samples.items()}
                    log(f"encryption run {number - settings.warmup + 1}/{settings.runs}: " + ", ".join(
                        f"{mode}/{kind} {tps:.0f} tok/s" for (mode, kind), tps in last.items()))
    finally:
        node.close()
    result: dict[str, object] = {}
    for kind in ("first", "next"):
        plain, sealed = samples[("plaintext", kind)], samples[("encrypted", kind)]
        for a, b in zip(plain, sealed):
            if a.text != b.text or a.tokens != b.tokens:
                raise RuntimeError(f"plaintext and encrypted outputs differ: {a.text[:60]!r} vs {b.text[:60]!r}")
        plain_tps, plain_ttft = summarize(plain)
        sealed_tps, sealed_ttft = summarize(sealed)
        result.update({
            f"{kind}_plaintext_tokens_per_s": rounded(plain_tps, 1),
            f"{kind}_encrypted_tokens_per_s": rounded(sealed_tps, 1),
            f"{kind}_ratio": rounded(sealed_tps / plain_tps, 3),
            f"{kind}_plaintext_ttft_ms": rounded(plain_ttft, 3),
            f"{kind}_encrypted_ttft_ms": rounded(sealed_ttft, 3),
            f"{kind}_tokens": plain[0].tokens,
        })
    return {**result, "runs": settings.runs, "max_tokens": settings.max_tokens, "threads": settings.threads,
            "template": settings.template, **settings.model_info()}


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import build_parser

    parser = build_parser()
    args = parser.parse_args(["overhead", *sys.argv[1:]])
    try:
        with tempfile.TemporaryDirectory(prefix="fabstir-bench-") as scratch:
            try:
                model, fallback = resolve_model(args.model, Path(scratch), allow_fallback=args.allow_fallback_model)
            except ModelMissingError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            settings = Settings(model=model, model_fallback=fallback, template=args.template, prompt=args.prompt,
                                max_tokens=args.max_tokens, context_window=args.context_window,
                                threads=args.threads, runs=args.runs, warmup=args.warmup, run_timeout=args.timeout)
            before = load_average()
            result = asyncio.run(run_encryption(settings))
            result["load_average"] = {"before": before, "after": load_average()}
    finally:
        close_all()
    print(json.dumps(result, separators=(",", ":")) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
