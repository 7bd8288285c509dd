"""``fabstir node``: run a host node (``serve``) and its on-chain chores (``register``, ``unregister``,
``earnings``, ``withdraw``).

Only the options live here; the work is imported when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Annotated, Optional

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``fabstir node ...`` to the root app."""
    node = typer.Typer(help="run a host node and manage its registration and earnings", no_args_is_help=True)
    node.command("serve", help="serve a model over HTTP and /v1/ws (until Ctrl-C)")(serve)
    node.command("register", help="stake and register this host on the NodeRegistry")(register_host)
    node.command("unregister", help="leave the registry; the stake comes back at once or after its unbonding "
                                    "period (then withdraw-stake)")(unregister)
    node.command("withdraw-stake", help="withdraw the stake once its unbonding period after unregister is over"
                 )(withdraw_stake)
    node.command("earnings", help="show what the host may withdraw")(earnings)
    node.command("withdraw", help="withdraw the host's earnings")(withdraw)
    node.command("proof-keys", help="build the checkpoint-proof keys now (once; a proving node builds them on "
                                    "first use otherwise)")(proof_keys)
    app.add_typer(node, name="node")


def serve(
    config: Annotated[Optional[str], typer.Option(metavar="FILE", help="TOML settings (\\[node] table), or a network file from "
                                                       "fabstir devnet up")] = None,
    model_path: Annotated[Optional[str], typer.Option("--model", metavar="FILE|NAME", help="GGUF file (default: Gemma 3 270M); with "
                                                                      "--engine openai the upstream's model "
                                                                      "name")] = None,
    engine: Annotated[Optional[str], typer.Option(metavar="NAME", help="llama (llama.cpp in this process, a "
                                                                       "context per answer; the default), "
                                                                       "llama-batch (llama.cpp, one context decoding "
                                                                       "the --parallel answers together) or openai "
                                                                       "(forward to an OpenAI-compatible server: "
                                                                       "vLLM, llama-server, Ollama, SGLang)")] = None,
    upstream: Annotated[Optional[str], typer.Option(metavar="URL", help="with --engine openai: the upstream server's base "
                                                         "URL")] = None,
    model_id: Annotated[Optional[str], typer.Option(metavar="NAME", help="name clients use for the model")] = None,
    host: Annotated[Optional[str], typer.Option(metavar="ADDRESS", help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default 8080; 0 picks a free one)")] = None,
    template: Annotated[Optional[str], typer.Option(metavar="NAME", help="prompt template: plain, raw, chatml, gemma")] = None,
    context_window: Annotated[Optional[int], typer.Option(help="tokens of context (default 2048)")] = None,
    parallel: Annotated[Optional[int], typer.Option(help="responses generated at once: engines, or llama-batch's "
                                                         "sequences (default 2)")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per engine")] = None,
    max_frame_bytes: Annotated[Optional[int], typer.Option(help="largest WebSocket frame accepted")] = None,
    network: Annotated[Optional[str], typer.Option(metavar="FILE", help="network file: serve paid sessions on that chain (key in "
                                                        "$FABSTIR_NODE_HOST_KEY)")] = None,
    model_repo: Annotated[Optional[str], typer.Option(metavar="REPO", help="repo part of the on-chain model id (default "
                                                           "'local')")] = None,
    checkpoint_tokens: Annotated[Optional[int], typer.Option(help="tokens per checkpoint (default 1000)")] = None,
    ledger_path: Annotated[Optional[str], typer.Option("--ledger", metavar="FILE", help="billing ledger file (SQLite)")] = None,
    signing_key_file: Annotated[Optional[str], typer.Option(metavar="FILE", help="Ed25519 key that signs receipts (created 0600 "
                                                                 "if missing; password in "
                                                                 "$FABSTIR_NODE_KEY_PASSWORD)")] = None,
    discovery_url: Annotated[Optional[str], typer.Option(metavar="URL", help="HTTP discovery service to announce to (signed "
                                                              "heartbeats)")] = None,
    announce_mdns: Annotated[Optional[bool], typer.Option("--announce-mdns", help="announce over mDNS on "
                                                                                  "127.0.0.1")] = None,
    dht_bootstrap: Annotated[Optional[str], typer.Option(metavar="HOST:PORT,...", help="join the DHT through host:port[,host:port...] and "
                                                              "announce there")] = None,
    dht_port: Annotated[Optional[int], typer.Option(help="UDP port of this node's DHT peer (default: a free "
                                                         "one)")] = None,
    announce_price: Annotated[Optional[int], typer.Option(help="price per token to announce (x1000, base "
                                                               "units)")] = None,
    announce_region: Annotated[Optional[str], typer.Option(metavar="REGION", help="region to announce")] = None,
    announce_ttl: Annotated[Optional[int], typer.Option(help="seconds an announcement stays valid (default "
                                                             "60)")] = None,
    public_url: Annotated[Optional[str], typer.Option(metavar="URL", help="URL to announce, when not the bound address")] = None,
    require_auth: Annotated[Optional[bool], typer.Option("--require-auth", help="(the default) serve a paid "
                                                                                "session only to its "
                                                                                "authenticated depositor")] = None,
    insecure_serve_without_depositor_auth: Annotated[Optional[bool], typer.Option(
        "--insecure-serve-without-depositor-auth",
        help="INSECURE, test networks only: serve paid sessions to anyone who names a job id")] = None,
    json: Annotated[bool, typer.Option("--json", help="when serving, print {\"url\": ..., \"ws_url\": ..., "
                                                      "\"model\": ...} as one JSON line on stdout")] = False,
) -> int:
    from fabstir.cli.serve import run_serve

    return asyncio.run(run_serve(argparse.Namespace(**locals())))


NetworkOption = Annotated[str, typer.Option("--network", "--config", metavar="FILE", help="network file (fabstir devnet up "
                                                                          "writes one)")]
KeyOption = Annotated[Optional[str], typer.Option(metavar="HEX", help="host private key (default: $FABSTIR_NODE_HOST_KEY, or "
                                                       "--account)")]
AccountOption = Annotated[Optional[str], typer.Option(metavar="NAME", help="a named account from the network file (development "
                                                           "networks)")]
JsonOption = Annotated[bool, typer.Option("--json", help="print the outcome as one line of JSON")]


def _chain_command(command: str, **values: object) -> int:
    from fabstir.cli.host import run_host_command

    return asyncio.run(run_host_command(argparse.Namespace(node_command=command, **values)))


def register_host(
    network: NetworkOption,
    api_url: Annotated[str, typer.Option(metavar="URL", help="the node's public URL, e.g. http://127.0.0.1:8080")],
    models: Annotated[list[str], typer.Option("--model", metavar="REPO/FILE", help="model as repo/file (repeat "
                                                                                   "for several)")],
    key: KeyOption = None,
    account: AccountOption = None,
    name: Annotated[str, typer.Option(metavar="NAME", help="host name in the metadata")] = "fabstir host",
    price_native: Annotated[int, typer.Option(help="minimum price in wei per token x1000")] = 2_000_000_000,
    price_stable: Annotated[int, typer.Option(help="minimum price in stablecoin base units per token "
                                                   "x1000")] = 10_000,
    public_key: Annotated[Optional[str], typer.Option(metavar="HEX", help="compressed secp256k1 key for encrypted sessions (hex; "
                                                           "default: the host key's, which the node uses)")] = None,
    signing_key_file: Annotated[Optional[str], typer.Option(metavar="FILE", help="the node's Ed25519 key file (publishes the key "
                                                                 "that signs receipts)")] = None,
    json: JsonOption = False,
) -> int:
    return _chain_command("register", **locals())


def unregister(network: NetworkOption, key: KeyOption = None, account: AccountOption = None,
               json: JsonOption = False) -> int:
    return _chain_command("unregister", **locals())


def withdraw_stake(network: NetworkOption, key: KeyOption = None, account: AccountOption = None,
                   json: JsonOption = False) -> int:
    return _chain_command("withdraw-stake", **locals())


def earnings(network: NetworkOption, key: KeyOption = None, account: AccountOption = None,
             json: JsonOption = False) -> int:
    return _chain_command("earnings", **locals())


def withdraw(network: NetworkOption, key: KeyOption = None, account: AccountOption = None,
             token: Annotated[Optional[str], typer.Option(metavar="ADDRESS", help="ERC20 address (default: ETH)")] = None,
             json: JsonOption = False) -> int:
    return _chain_command("withdraw", **locals())


def proof_keys(
    cache_dir: Annotated[Optional[str], typer.Option(metavar="DIR", help="where the keys are kept (default: "
                                                                         "$FABSTIR_ZK_CACHE, else "
                                                                         "~/.cache/fabstir/zk)")] = None,
    srs: Annotated[Optional[str], typer.Option(metavar="FILE", help="the structured reference string (default: "
                                                                    "the bundled development SRS)")] = None,
    json: Annotated[bool, typer.Option("--json", help="print the keys' directory and build record as one line of "
                                                      "JSON")] = False,
) -> int:
    from fabstir.cli.output import print_json, progress_lines
    from fabstir.zk.keys import ensure_keys

    with progress_lines("building the checkpoint-proof keys", 3) as line:
        keys = ensure_keys(cache_dir, srs=srs, progress=line)
    if json:
        print_json({"directory": str(keys.directory), **keys.info})
    else:
        info = keys.info
        print(f"checkpoint-proof keys of circuit {info['circuit']} ({info['circuit_id']}) in {keys.directory}: "
              f"proving key {info['pk_bytes'] / 1e6:.1f} MB, verifying key sha256 {info['vk_sha256']}")
    return 0
