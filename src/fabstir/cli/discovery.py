"""``fabstir discovery serve``: run the HTTP discovery service until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys

from fabstir.cli.output import print_json
from fabstir.errors import ConfigError

__all__ = ["run_discovery_serve"]


async def run_discovery_serve(args: argparse.Namespace) -> int:
    """Serve a discovery registry on ``args.host:args.port`` and print its URL on stderr."""
    from fabstir.discovery.http_service import serve_discovery

    if args.max_hosts < 1:
        raise ConfigError(f"--max-hosts must be at least 1, got {args.max_hosts}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    async with serve_discovery(args.host, args.port, max_hosts=args.max_hosts) as server:
        print(f"[fabstir] discovery service on {server.url} (up to {args.max_hosts} hosts); Ctrl-C stops",
              file=sys.stderr, flush=True)
        if getattr(args, "json", False):
            print_json({"url": server.url, "max_hosts": args.max_hosts})
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            pass
    return 0
