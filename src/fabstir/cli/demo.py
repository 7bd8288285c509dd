"""``fabstir demo``: a node on a free loopback port, a multi-turn chat through the SDK, a summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from fabstir.node.config import NodeConfig
from fabstir.node.server import serve_node
from fabstir.sdk import FabstirSDK, InferenceResult, PromptOptions

__all__ = ["DEFAULT_PROMPTS", "run_demo", "summarize"]

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "What is that city famous for?",
    "Thank you! Say goodbye in one short sentence.",
)


def _progress(text: str) -> None:
    print(f"[fabstir] {text}", file=sys.stderr, flush=True)


async def run_demo(args: argparse.Namespace) -> int:
    config = NodeConfig(port=0, model_path=args.model, parallel=1,
                        template=args.template or ("plain" if args.model is None else "plain"))
    prompts = tuple(args.prompts or DEFAULT_PROMPTS)
    options = PromptOptions(max_tokens=args.max_tokens, temperature=args.temperature)
    started = time.perf_counter()
    async with serve_node(config, progress=_progress) as server:
        model = server.runtime.inference.model_id
        _progress(f"node serving {model} at {server.url}")
        results = await _chat(server.url, prompts, options)
    summary = summarize(server.url, model, results, time.perf_counter() - started)
    _print_summary(summary, as_json=args.json)
    return 0


async def _chat(host_url: str, prompts: tuple[str, ...], options: PromptOptions) -> list[InferenceResult]:
    session_id = f"demo-{uuid.uuid4().hex[:8]}"
    results = []
    async with FabstirSDK(default_options=options) as sdk:
        await sdk.inference.connect_to_session(session_id, host_url, job_id=None)
        for prompt in prompts:
            print(f"\nuser> {prompt}\nassistant> ", end="", flush=True)
            result = await sdk.inference.send_prompt(prompt, on_token=_echo)
            print(f"\n  [{result.completion_tokens} tokens, {result.finish_reason}, "
                  f"TTFT {result.ttft_ms or 0:.1f} ms, {result.tokens_per_s:.1f} tokens/s]", flush=True)
            results.append(result)
    return results


def _echo(text: str) -> None:
    print(text, end="", flush=True)


def summarize(host: str, model: str, results: list[InferenceResult], wall_s: float) -> dict[str, object]:
    """The demo's summary: totals over every turn (integers for token counts)."""
    completion = sum(r.completion_tokens for r in results)
    prompt_tokens = sum(r.usage.prompt_tokens for r in results if r.usage is not None)
    ttfts = [r.ttft_ms for r in results if r.ttft_ms is not None]
    stream_s = sum(r.completion_tokens / r.tokens_per_s for r in results if r.tokens_per_s > 0)
    return {
        "host": host,
        "model": model,
        "turns": len(results),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "ttft_ms": round(sum(ttfts) / len(ttfts), 2) if ttfts else None,
        "tokens_per_s": round(completion / stream_s, 2) if stream_s > 0 else 0.0,
        "wall_s": round(wall_s, 2),
    }


def _print_summary(summary: dict[str, object], *, as_json: bool) -> None:
    print("\n\nsummary")
    for key, value in summary.items():
        print(f"  {key:18} {value}")
    if as_json:
        print(json.dumps(summary, separators=(",", ":")))
