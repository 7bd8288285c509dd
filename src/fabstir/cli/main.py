"""The ``fabstir`` command: ``demo``, ``chat`` and ``node serve``.

``main(argv)`` returns the exit code; failures print one line
(``error: CODE: message``) on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from fabstir import __version__
from fabstir.cli.gateway import add_gateway_parser
from fabstir.cli.hosts import add_hosts_parser
from fabstir.cli.spending import add_spending_parsers
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
    demo.add_argument("--free", action="store_true", help="skip the chain: no deposit, no billing")
    demo.add_argument("--dispute-window", type=int, default=2,
                      help="seconds the host waits after its last checkpoint before settling (default 2)")

    chat = commands.add_parser("chat", help="interactive streaming chat: a paid session through discovery "
                                           "(--network), or a given host (--host)")
    chat.add_argument("--host", default=None, help="host URL, e.g. http://127.0.0.1:8080 (a free host)")
    chat.add_argument("--network", default=None, help="network file: open a paid session on a host chosen by "
                                                      "discovery (client key in $FABSTIR_CLIENT_KEY)")
    chat.add_argument("--model", default=None, help="with --network: the model, repo/file")
    chat.add_argument("--deposit", type=int, default=10**15, help="with --network: escrow in wei (default 1e15)")
    chat.add_argument("--strategy", default="composite",
                      help="with --network: cheapest, fastest, reputable, composite, round_robin")
    chat.add_argument("--fallback-host", action="append", default=[], metavar="URL",
                      help="another host to continue on if the current one dies or stalls mid-answer (repeatable)")
    chat.add_argument("--session", default=None, help="session id (default: a new random id)")
    chat.add_argument("--job-id", type=int, default=None)
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)

    node = commands.add_parser("node", help="run a host node")
    node_commands = node.add_subparsers(dest="node_command", required=True)
    serve = node_commands.add_parser("serve", help="serve a model over HTTP and /v1/ws")
    serve.add_argument("--config", help="TOML settings ([node] table), or a network file from fabstir devnet up")
    serve.add_argument("--model", dest="model_path", help="GGUF file (default: Gemma 3 270M); with --engine openai "
                                                         "the upstream's model name")
    serve.add_argument("--engine", help="llama (llama.cpp in this process, the default) or openai (forward to an "
                                        "OpenAI-compatible server: vLLM, llama-server, Ollama, SGLang)")
    serve.add_argument("--upstream", help="with --engine openai: the upstream server's base URL")
    serve.add_argument("--model-id", help="name clients use for the model")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--template", help="prompt template: plain, raw, chatml, gemma")
    serve.add_argument("--context-window", type=int, help="tokens of context (default 2048)")
    serve.add_argument("--parallel", type=int, help="responses generated at once (default 2)")
    serve.add_argument("--threads", type=int, help="CPU threads per engine")
    serve.add_argument("--max-frame-bytes", type=int, help="largest WebSocket frame accepted")
    serve.add_argument("--network", help="network file: serve paid sessions on that chain (key in "
                                         "$FABSTIR_NODE_HOST_KEY)")
    serve.add_argument("--model-repo", help="repo part of the on-chain model id (default 'local')")
    serve.add_argument("--checkpoint-tokens", type=int, help="tokens per checkpoint (default 1000)")
    serve.add_argument("--ledger", dest="ledger_path", help="billing ledger file (SQLite)")
    serve.add_argument("--signing-key-file", help="Ed25519 key that signs receipts (created 0600 if missing; "
                                                  "password in $FABSTIR_NODE_KEY_PASSWORD)")
    serve.add_argument("--discovery-url", help="HTTP discovery service to announce to (signed heartbeats)")
    serve.add_argument("--announce-mdns", action="store_const", const=True, default=None,
                       help="announce over mDNS on 127.0.0.1")
    serve.add_argument("--dht-bootstrap", help="join the DHT through host:port[,host:port...] and announce there")
    serve.add_argument("--dht-port", type=int, help="UDP port of this node's DHT peer (default: a free one)")
    serve.add_argument("--announce-price", type=int, help="price per token to announce (x1000, base units)")
    serve.add_argument("--announce-region", help="region to announce")
    serve.add_argument("--announce-ttl", type=int, help="seconds an announcement stays valid (default 60)")
    serve.add_argument("--public-url", help="URL to announce, when not the bound address")
    serve.add_argument("--require-auth", action="store_const", const=True, default=None,
                       help="(the default) serve a paid session only to its authenticated depositor")
    serve.add_argument("--insecure-serve-without-depositor-auth", action="store_const", const=True, default=None,
                       dest="insecure_serve_without_depositor_auth",
                       help="INSECURE, test networks only: serve paid sessions to anyone who names a job id")
    _add_chain_commands(node_commands, commands)

    discovery = commands.add_parser("discovery", help="the HTTP discovery service")
    discovery_commands = discovery.add_subparsers(dest="discovery_command", required=True)
    discovery_serve = discovery_commands.add_parser("serve", help="list hosts that announce signed records")
    discovery_serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    discovery_serve.add_argument("--port", type=int, default=8090, help="port (default 8090; 0 picks a free one)")
    discovery_serve.add_argument("--max-hosts", type=int, default=1000, help="live hosts held (default 1000)")
    return parser


def _add_chain_commands(node_commands: Any, commands: Any) -> None:
    for name, text in (("register", "stake and register this host on the NodeRegistry"),
                       ("unregister", "leave the registry and get the stake back"),
                       ("earnings", "show what the host may withdraw"),
                       ("withdraw", "withdraw the host's earnings")):
        sub = node_commands.add_parser(name, help=text)
        sub.add_argument("--network", "--config", dest="network", required=True,
                         help="network file (fabstir devnet up writes one)")
        sub.add_argument("--key", help="host private key (default: $FABSTIR_NODE_HOST_KEY, or --account)")
        sub.add_argument("--account", help="a named account from the network file (development networks)")
        if name == "register":
            sub.add_argument("--api-url", required=True, help="the node's public URL, e.g. http://127.0.0.1:8080")
            sub.add_argument("--model", required=True, action="append", dest="models",
                             help="model as repo/file (repeat for several)")
            sub.add_argument("--name", default="fabstir host", help="host name in the metadata")
            sub.add_argument("--price-native", type=int, default=2_000_000_000,
                             help="minimum price in wei per token x1000 (default 2000000000)")
            sub.add_argument("--price-stable", type=int, default=10_000,
                             help="minimum price in stablecoin base units per token x1000 (default 10000)")
            sub.add_argument("--public-key", help="compressed secp256k1 key for encrypted sessions (hex; "
                                                  "default: the host key's, which the node uses)")
            sub.add_argument("--signing-key-file", help="the node's Ed25519 key file (publishes the key that "
                                                        "signs receipts)")
        if name == "withdraw":
            sub.add_argument("--token", default=None, help="ERC20 address (default: ETH)")

    add_hosts_parser(commands)
    add_gateway_parser(commands)
    add_spending_parsers(commands)

    devnet = commands.add_parser("devnet", help="a local anvil chain with the contracts deployed")
    devnet_commands = devnet.add_subparsers(dest="devnet_command", required=True)
    up = devnet_commands.add_parser("up", help="start anvil, deploy, fund accounts, write a network file")
    up.add_argument("--file", default="devnet.json", help="network file to write (default devnet.json)")
    up.add_argument("--port", type=int, default=0, help="anvil port on 127.0.0.1 (default: a free one)")
    up.add_argument("--dispute-window", type=int, default=30)
    up.add_argument("--model", action="append", dest="models", default=None,
                    help="approve this model (repo/file); repeat for several")
    up.add_argument("--hosts", type=int, default=2,
                    help="host nodes to start, registered at different prices, with a discovery service "
                         "(default 2; 0: the chain alone)")
    up.add_argument("--host-model", default=None, help="GGUF file the hosts serve (default: the default model)")
    down = devnet_commands.add_parser("down", help="stop the anvil started by 'up'")
    down.add_argument("--file", default="devnet.json")


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
        if args.command == "devnet":
            from fabstir.cli.devnet import run_devnet

            return run_devnet(args)
        if args.command == "hosts":
            from fabstir.cli.hosts import run_hosts

            return asyncio.run(run_hosts(args))
        if args.command in ("sessions", "spend"):
            from fabstir.cli.spending import run_spending

            return asyncio.run(run_spending(args))
        if args.command == "gateway":
            from fabstir.cli.gateway import run_gateway

            return asyncio.run(run_gateway(args))
        if args.command == "discovery":
            from fabstir.cli.discovery import run_discovery_serve

            return asyncio.run(run_discovery_serve(args))
        if args.node_command == "serve":
            from fabstir.cli.serve import run_serve

            return asyncio.run(run_serve(args))
        from fabstir.cli.host import run_host_command

        return asyncio.run(run_host_command(args))
    except FabstirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
