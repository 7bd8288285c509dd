"""Benchmarks of the fabstir SDK and node: ``python benchmarks/run.py NAME [--json] [options]``.

NAME is ``overhead``, ``peer``, ``concurrency``, ``billing``, ``session_open``, ``compression``, ``security``,
``encryption``, ``selection``, ``discovery``, ``fairness``, ``limits``, ``failover``, ``gateway``, ``proofs``,
``throughput`` or ``all``. Progress goes to
stderr; with ``--json`` the last line of stdout is one JSON object. See
``benchmarks/README.md`` for what each number means. Every result carries the machine's load average
(``os.getloadavg``) before and after it ran. Without ``../shared/models/stories260K.gguf`` (or ``--model``)
a benchmark fails, unless ``--allow-fallback-model`` lets it measure a tiny random-weight model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from billing import run_billing  # noqa: E402
from common import Settings, close_all, load_average, log, resolve_model  # noqa: E402
from compression import run_compression  # noqa: E402
from concurrency import ConcurrencyOptions, run_concurrency  # noqa: E402
from discovery import run_discovery  # noqa: E402
from encryption import run_encryption  # noqa: E402
from failover import run_failover  # noqa: E402
from fairness import run_fairness  # noqa: E402
from gateway import GatewayOptions, run_gateway  # noqa: E402
from limits import run_limits  # noqa: E402
from overhead import run_overhead  # noqa: E402
from peer import run_peer  # noqa: E402
from proofs import run_proofs  # noqa: E402
from security import run_security  # noqa: E402
from selection import run_selection  # noqa: E402
from session_open import run_session_open  # noqa: E402
from throughput import ThroughputOptions, run_throughput  # noqa: E402

BENCHMARKS = ("overhead", "peer", "concurrency", "billing", "session_open", "compression", "security",
              "encryption", "selection", "discovery", "fairness", "limits", "failover", "gateway", "proofs",
              "throughput")
NAMES = (*BENCHMARKS, "all")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=NAMES, help="which benchmark to run")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line of stdout")
    parser.add_argument("--model", help="GGUF file (default: ../shared/models/stories260K.gguf; "
                                        "$FABSTIR_SHARED_MODELS names another folder)")
    parser.add_argument("--allow-fallback-model", action="store_true",
                        help="if the default model is missing, measure a tiny random-weight GGUF instead of failing "
                             "(results then carry model_fallback)")
    parser.add_argument("--template", default="raw", help="node prompt template (default raw)")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per run for overhead/peer (default 256)")
    parser.add_argument("--context-window", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1,
                        help="llama.cpp threads per engine for overhead/peer, on every side (default 1)")
    parser.add_argument("--runs", type=int, default=20, help="measured repetitions per side (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured repetitions per side first (default 3)")
    parser.add_argument("--sessions", type=int, default=100, help="concurrent sessions (default 100)")
    parser.add_argument("--parallel", type=int, default=4, help="node engines for concurrency (default 4)")
    parser.add_argument("--concurrency-threads", type=int, default=1, help="threads per engine for concurrency")
    parser.add_argument("--concurrency-max-tokens", type=int, default=64, help="tokens per session (default 64)")
    parser.add_argument("--billing-prompts", type=int, default=3,
                        help="answers in a row per session in billing (default 3)")
    parser.add_argument("--discovery-hosts", type=int, default=1000,
                        help="hosts registered on the embedded chain for discovery (default 1000)")
    parser.add_argument("--body-mib", type=int, default=300, help="chunked body sent to the node in limits "
                                                                   "(default 300)")
    parser.add_argument("--gateway-streams", type=int, default=50,
                        help="concurrent openai clients streaming through the gateway (default 50)")
    parser.add_argument("--gateway-rounds", type=int, default=10,
                        help="measured rounds of those streams (default 10, after one warm-up round)")
    parser.add_argument("--gateway-max-tokens", type=int, default=16, help="tokens per concurrent stream (default 16)")
    parser.add_argument("--gateway-parallel", type=int, default=2, help="node engines for gateway (default 2)")
    parser.add_argument("--proofs-answers", type=int, default=50,
                        help="answers per honest and per cheating host in proofs (default 50)")
    parser.add_argument("--throughput-models", default="gemma,stories",
                        help="models for throughput: gemma (the default model package), stories (--model)")
    parser.add_argument("--throughput-levels", default="1,8,32", help="concurrent streams per level (default 1,8,32)")
    parser.add_argument("--throughput-slots", type=int, default=32,
                        help="sequences in our batch and llama-server slots (default 32)")
    parser.add_argument("--throughput-threads", type=int, default=2, help="threads on both sides (default 2)")
    parser.add_argument("--throughput-max-tokens", type=int, default=64, help="tokens per stream (default 64)")
    parser.add_argument("--throughput-rounds", type=int, default=2, help="measured rounds per level (default 2)")
    parser.add_argument("--throughput-no-flash-attention", action="store_true",
                        help="run our batching engine without flash attention (llama-server uses it by default)")
    parser.add_argument("--timeout", type=float, default=120.0, help="limit in seconds for one run or burst")
    return parser


async def run(args: argparse.Namespace, scratch: Path) -> dict[str, object]:
    """Run the chosen benchmark(s); returns the JSON object."""
    model, fallback = resolve_model(args.model, scratch, allow_fallback=args.allow_fallback_model)
    settings = Settings(model=model, model_fallback=fallback, template=args.template, prompt=args.prompt,
                        max_tokens=args.max_tokens, context_window=args.context_window, threads=args.threads,
                        runs=args.runs, warmup=args.warmup, run_timeout=args.timeout)
    concurrency = ConcurrencyOptions(sessions=args.sessions, parallel=args.parallel,
                                     threads=args.concurrency_threads, max_tokens=args.concurrency_max_tokens,
                                     timeout=args.timeout)
    chosen = list(BENCHMARKS) if args.name == "all" else [args.name]
    results: dict[str, dict[str, object]] = {}
    for name in chosen:
        started = time.perf_counter()
        load_before = load_average()
        log(f"=== {name} === (load average {load_before})")
        if name == "overhead":
            results[name] = await run_overhead(settings)
        elif name == "peer":
            results[name] = await run_peer(settings)
        elif name == "billing":
            results[name] = await run_billing(settings, args.billing_prompts)
        elif name == "session_open":
            results[name] = await run_session_open(settings)
        elif name == "compression":
            results[name] = await run_compression(settings)
        elif name == "security":
            results[name] = await run_security(settings)
        elif name == "encryption":
            results[name] = await run_encryption(settings)
        elif name == "selection":
            results[name] = await run_selection(settings)
        elif name == "fairness":
            results[name] = await run_fairness(settings)
        elif name == "discovery":
            results[name] = await run_discovery(args.discovery_hosts)
        elif name == "limits":
            results[name] = await run_limits(settings, args.body_mib)
        elif name == "failover":
            results[name] = await run_failover(settings)
        elif name == "gateway":
            results[name] = await run_gateway(settings, GatewayOptions(
                streams=args.gateway_streams, rounds=args.gateway_rounds, max_tokens=args.gateway_max_tokens,
                parallel=args.gateway_parallel, timeout=args.timeout))
        elif name == "proofs":
            results[name] = await run_proofs(settings, scratch, args.proofs_answers)
        elif name == "throughput":
            results[name] = await run_throughput(settings, ThroughputOptions(
                models=tuple(args.throughput_models.split(",")),
                levels=tuple(int(level) for level in args.throughput_levels.split(",")),
                slots=args.throughput_slots, threads=args.throughput_threads,
                max_tokens=args.throughput_max_tokens, rounds=args.throughput_rounds, timeout=max(args.timeout, 300.0),
                flash_attention=not args.throughput_no_flash_attention))
        else:
            results[name] = await run_concurrency(settings, concurrency)
        results[name]["load_average"] = {"before": load_before, "after": load_average()}
        log(f"=== {name} done in {time.perf_counter() - started:.1f} s: {json.dumps(results[name])}")
    if args.name != "all":
        return results[args.name]
    return {**results, **settings.model_info(), "machine": _machine()}


def _machine() -> dict[str, object]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    close_all()
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    for number in (args.max_tokens, args.runs, args.sessions, args.parallel, args.threads,
                   args.concurrency_threads, args.concurrency_max_tokens, args.billing_prompts, args.gateway_streams,
                   args.gateway_rounds, args.gateway_max_tokens, args.gateway_parallel, args.proofs_answers):
        if number < 1:
            print("error: counts must be at least 1", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _on_signal)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="fabstir-bench-") as scratch:
            result = asyncio.run(run(args, Path(scratch)))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        close_all()
    log(f"finished in {time.perf_counter() - started:.1f} s")
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
