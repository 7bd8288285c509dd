"""The ``fabstir`` command: ``demo``, ``chat`` and ``node serve``.

``main(argv)`` returns the exit code; failures print one line
(``error: CODE: message``) on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from fabstir import __version__
from fabstir.errors import FabstirError

__all__ = ["main", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fabstir", description="Decentralized LLM inference: SDK and host node.")
    parser.add_argument("--version", action="version", version=f"fabstir {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="start a local node and stream a short chat through the SDK")
    demo.add_argument("--model", help="GGUF file (default: Gemma 3 270M from the fabstir[model] package)")
    demo.add_argument("--template", default=None, help="prompt template: plain, raw, chatml, gemma")
    demo.add_argument("--max-tokens", type=int, default=48, help="tokens per answer (default 48)")
    demo.add_argument("--temperature", type=float, default=0.7)
    demo.add_argument("--prompt", action="append", dest="prompts", help="a user turn (repeat for several)")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")

    chat = commands.add_parser("chat", help="interactive streaming chat with a host")
    chat.add_argument("--host", required=True, help="host URL, e.g. http://127.0.0.1:8080")
    chat.add_argument("--session", default=None, help="session id (default: a new random id)")
    chat.add_argument("--job-id", type=int, default=None)
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)

    node = commands.add_parser("node", help="run a host node")
    node_commands = node.add_subparsers(dest="node_command", required=True)
    serve = node_commands.add_parser("serve", help="serve a model over HTTP and /v1/ws")
    serve.add_argument("--config", help="TOML file ([node] table)")
    serve.add_argument("--model", dest="model_path", help="GGUF file (default: Gemma 3 270M)")
    serve.add_argument("--model-id", help="name clients use for the model")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--template", help="prompt template: plain, raw, chatml, gemma")
    serve.add_argument("--context-window", type=int, help="tokens of context (default 2048)")
    serve.add_argument("--parallel", type=int, help="responses generated at once (default 2)")
    serve.add_argument("--threads", type=int, help="CPU threads per engine")
    serve.add_argument("--max-frame-bytes", type=int, help="largest WebSocket frame accepted")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from fabstir.cli.demo import run_demo

            return asyncio.run(run_demo(args))
        if args.command == "chat":
            from fabstir.cli.chat import run_chat

            return asyncio.run(run_chat(args))
        from fabstir.cli.serve import run_serve

        return asyncio.run(run_serve(args))
    except FabstirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
