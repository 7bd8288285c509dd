"""``fabstir node serve``: run a host node until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys

from fabstir.node.config import load_node_config
from fabstir.node.server import serve_node

__all__ = ["run_serve"]

_FLAGS = ("model_path", "engine", "upstream", "model_id", "host", "port", "template", "context_window", "parallel", "threads",
          "max_frame_bytes", "network", "model_repo", "checkpoint_tokens", "ledger_path", "signing_key_file",
          "require_auth", "insecure_serve_without_depositor_auth", "discovery_url", "announce_mdns", "dht_bootstrap", "dht_port", "announce_price",
          "announce_region", "announce_ttl", "public_url")


async def run_serve(args: argparse.Namespace) -> int:
    config = load_node_config(args.config, overrides={name: getattr(args, name) for name in _FLAGS})
    progress = _stderr_progress
    async with serve_node(config, progress=progress) as server:
        runtime = server.runtime
        progress(f"serving {runtime.inference.model_id} on {server.url} (WebSocket {server.ws_url}); Ctrl-C stops")
        if server.announcer is not None:
            targets = ", ".join(server.announcer.status)
            progress(f"announcing {server.announcer.host_address} to {targets} every {server.announcer.interval_s:.0f} s"
                     + (f"; DHT peer on {server.announcer.dht_address[0]}:{server.announcer.dht_address[1]}"
                        if server.announcer.dht_address else ""))
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            pass
    return 0


def _stderr_progress(text: str) -> None:
    print(f"[fabstir] {text}", file=sys.stderr, flush=True)
