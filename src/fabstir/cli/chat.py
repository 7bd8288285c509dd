"""``fabstir chat --host URL``: interactive streaming chat; Ctrl-C cancels an answer, Ctrl-D quits.

With ``--fallback-host URL`` (repeatable) a host that dies or stalls mid-answer is replaced by the next one,
which continues the answer where it stopped (the SDK's failover); the chat says so and goes on there.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import uuid

from fabstir.discovery.selection import HostCandidate
from fabstir.discovery.sources import StaticSource
from fabstir.sdk import FabstirSDK, PromptOptions

__all__ = ["run_chat"]


async def run_chat(args: argparse.Namespace) -> int:
    options = PromptOptions(max_tokens=args.max_tokens, temperature=args.temperature)
    session_id = args.session or f"chat-{uuid.uuid4().hex[:8]}"
    hosts = [args.host, *args.fallback_host]
    sources = [StaticSource([HostCandidate(address=url, api_url=url) for url in hosts])] if len(hosts) > 1 else []
    async with FabstirSDK(default_options=options, discovery_sources=sources) as sdk:
        await sdk.inference.connect_to_session(session_id, args.host, job_id=args.job_id)
        lines = _stdin_lines()
        print(f"connected to {args.host} (session {session_id}); Ctrl-C cancels an answer, Ctrl-D quits",
              file=sys.stderr)
        while True:
            print("you> ", end="", flush=True)
            line = await lines.get()
            if line is None:
                return 0
            if line.strip():
                await _answer(sdk, line.strip())


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of stdin, read on a daemon thread (so quitting never waits for input)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:  # the event loop closed: the chat is over
            pass

    threading.Thread(target=read, daemon=True, name="fabstir-stdin").start()
    return queue


async def _answer(sdk: FabstirSDK, prompt: str) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(sdk.inference.cancel()))
    try:
        result = await sdk.inference.send_prompt(prompt, on_token=_echo)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    for before, after in zip(result.parts, result.parts[1:]):
        print(f"\n[{before.host} stopped answering after token {after.first_token}; {after.host} continued]",
              file=sys.stderr)
    print(f"\n[{result.completion_tokens} tokens, {result.finish_reason}, {result.tokens_per_s:.1f} tokens/s]",
          file=sys.stderr)


def _echo(text: str) -> None:
    print(text, end="", flush=True)
