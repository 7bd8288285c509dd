"""``fabstir chat``: interactive streaming chat; Ctrl-C cancels an answer, Ctrl-D quits.

``--network FILE --model repo/file``: a paid session on a host chosen by unified discovery (``--strategy``), with
``--deposit`` in escrow and the client key in ``$FABSTIR_CLIENT_KEY``; after each answer the chat shows its cost
and the session's total, and when it ends the host settles. ``--host URL``: a free host. Either way a host
that dies or stalls mid-answer is replaced (on a chain: any other registered host; with ``--fallback-host URL``,
repeatable, those hosts), which continues the answer where it stopped; the chat says so and goes on there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import uuid
from typing import TYPE_CHECKING

from fabstir.chain.money import token_cost
from fabstir.cli.output import print_table, table
from fabstir.discovery.selection import HostCandidate
from fabstir.discovery.sources import StaticSource
from fabstir.errors import ConfigError
from fabstir.sdk import FabstirSDK, InferenceResult, PromptOptions

if TYPE_CHECKING:
    from fabstir.sdk.opening import OpenedSession

__all__ = ["run_chat"]


async def run_chat(args: argparse.Namespace) -> int:
    options = PromptOptions(max_tokens=args.max_tokens, temperature=args.temperature)
    if args.network is None and args.host is None:
        raise ConfigError("give --network FILE (a paid session through discovery) or --host URL (a free host)")
    if args.network is not None:
        return await _paid_chat(args, options)
    session_id = args.session or f"chat-{uuid.uuid4().hex[:8]}"
    hosts = [args.host, *args.fallback_host]
    sources = [StaticSource([HostCandidate(address=url, api_url=url) for url in hosts])] if len(hosts) > 1 else []
    async with FabstirSDK(default_options=options, discovery_sources=sources) as sdk:
        await sdk.inference.connect_to_session(session_id, args.host, job_id=args.job_id)
        print(f"connected to {args.host} (session {session_id}); Ctrl-C cancels an answer, Ctrl-D quits",
              file=sys.stderr)
        await _converse(sdk, session_id, None, [])
    return 0


async def _paid_chat(args: argparse.Namespace, options: PromptOptions) -> int:
    from eth_account import Account

    from fabstir.chain.backend import Chain
    from fabstir.chain.network import NetworkConfig

    if not args.model:
        raise ConfigError("a paid chat needs --model repo/file")
    key = os.environ.get("FABSTIR_CLIENT_KEY")
    if not key:
        raise ConfigError("a paid chat needs the client key in $FABSTIR_CLIENT_KEY", code="CLIENT_KEY_REQUIRED")
    network = NetworkConfig.load(args.network)
    chain = Chain.connect(network.rpc_url)
    try:
        async with FabstirSDK(chain=chain, deployment=network.deployment, account=Account.from_key(key),
                              default_options=options) as sdk:
            opened = await sdk.sessions.open_session(args.model, args.deposit, strategy=args.strategy)
            await opened.connect()
            print(f"paid session {opened.session_id} with {opened.host.address} at {opened.host.api_url}: "
                  f"{opened.job.price_per_token} per 1000 tokens, {args.deposit} in escrow; "
                  "Ctrl-C cancels an answer, Ctrl-D quits and settles", file=sys.stderr)
            receipts: list[tuple[int, str, int, int, int]] = []
            try:
                await _converse(sdk, opened.session_id, opened, receipts)
            finally:
                await opened.close()
                _print_receipts(opened.session_id, receipts)
                print("[session closed: the host settles it on chain]", file=sys.stderr)
    finally:
        chain.close()
    return 0


async def _converse(sdk: FabstirSDK, session_id: str, opened: OpenedSession | None,
                    receipts: list[tuple[int, str, int, int, int]]) -> None:
    """Answer each line of stdin; on a paid session, note ``(turn, host, tokens, price, cost)`` per answer."""
    lines = _stdin_lines()
    spent = 0
    while True:
        print("you> ", end="", flush=True)
        line = await lines.get()
        if line is None:
            return
        if line.strip():
            result = await _answer(sdk, line.strip())
            if opened is not None:
                session = sdk.inference.session(session_id)
                price = session.route.price_per_token if session.route is not None else opened.job.price_per_token
                cost = token_cost(result.tokens_used, price)
                spent += cost
                receipts.append((len(receipts) + 1, session.host_url or "-", result.tokens_used, price, cost))
                print(f"[cost {cost} wei for {result.tokens_used} tokens at {price}/1000; session total {spent} wei; "
                      f"host {session.host_url}]", file=sys.stderr)


def _print_receipts(session_id: str, receipts: list[tuple[int, str, int, int, int]]) -> None:
    """The paid chat's answers and what each cost (on stderr, where the chat's notes go)."""
    if not receipts:
        return
    listing = table("answer", "host", "tokens", "price/1000", "cost (wei)", title=f"session {session_id}: "
                    f"{sum(r[4] for r in receipts)} wei for {sum(r[2] for r in receipts)} tokens",
                    right=("answer", "tokens", "price/1000", "cost (wei)"))
    for turn, host, tokens, price, cost in receipts:
        listing.add_row(str(turn), host, str(tokens), str(price), str(cost))
    print_table(listing, stderr=True)


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


async def _answer(sdk: FabstirSDK, prompt: str) -> InferenceResult:
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
    return result


def _echo(text: str) -> None:
    print(text, end="", flush=True)
