"""The client side's commands: ``demo``, ``chat``, ``hosts``, ``sessions``, ``spend`` and ``discovery serve``.

Only the options live here; each command's work is imported when it runs (``fabstir --help`` stays quick).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Annotated, Optional

import typer

__all__ = ["register"]

STRATEGY_NAMES = ("cheapest", "fastest", "reputable", "composite", "round_robin")
JSON_HELP = "print JSON (one line) instead of a table"


def _strategy(value: str) -> str:
    if value not in STRATEGY_NAMES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(STRATEGY_NAMES)}")
    return value


def register(app: typer.Typer) -> None:
    """Add the client commands to the root ``fabstir`` app."""
    app.command("demo", help="start a local node and stream a short paid chat through the SDK, with a receipt")(demo)
    app.command("chat", help="interactive streaming chat: a paid session through discovery (--network), "
                             "or a given host (--host)")(chat)
    app.command("hosts", help="discover hosts and rank them (chain, HTTP service, mDNS, DHT)")(hosts)
    app.command("sessions", help="a depositor's session jobs: status, host, tokens, cost, refund")(sessions)
    app.command("spend", help="what a depositor's sessions cost, per day, host and model")(spend)
    discovery = typer.Typer(help="the HTTP discovery service", no_args_is_help=True)
    discovery.command("serve", help="list hosts that announce signed records (until Ctrl-C)")(discovery_serve)
    app.add_typer(discovery, name="discovery")


def demo(
    model: Annotated[Optional[str], typer.Option(metavar="FILE", help="GGUF file (default: Gemma 3 270M from the fabstir\\[model] "
                                                      "package)")] = None,
    template: Annotated[Optional[str], typer.Option(metavar="NAME", help="prompt template: plain, raw, chatml, gemma")] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens per answer")] = 48,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.7,
    prompts: Annotated[Optional[list[str]], typer.Option("--prompt", metavar="TEXT",
                                                         help="a user turn (repeat for several)")] = None,
    json: Annotated[bool, typer.Option("--json", help="print the summary as JSON on the last line")] = False,
    free: Annotated[bool, typer.Option("--free", help="skip the chain: no deposit, no billing")] = False,
    dispute_window: Annotated[int, typer.Option(help="seconds the host waits after its last checkpoint before "
                                                     "settling")] = 2,
) -> int:
    from fabstir.cli.demo import run_demo

    return asyncio.run(run_demo(argparse.Namespace(**locals())))


def chat(
    host: Annotated[Optional[str], typer.Option(metavar="URL", help="host URL, e.g. http://127.0.0.1:8080 (a free host)")] = None,
    network: Annotated[Optional[str], typer.Option(metavar="FILE", help="network file: open a paid session on a host chosen by "
                                                        "discovery (client key in $FABSTIR_CLIENT_KEY)")] = None,
    model: Annotated[Optional[str], typer.Option(metavar="REPO/FILE", help="with --network: the model, repo/file")] = None,
    deposit: Annotated[int, typer.Option(help="with --network: escrow in wei")] = 10**15,
    strategy: Annotated[str, typer.Option(metavar="NAME", help="with --network: cheapest, fastest, reputable, composite, "
                                               "round_robin", callback=_strategy)] = "composite",
    fallback_host: Annotated[Optional[list[str]], typer.Option(
        metavar="URL", help="another host to continue on if the current one dies or stalls mid-answer "
                            "(repeatable)")] = None,
    session: Annotated[Optional[str], typer.Option(metavar="ID", help="session id (default: a new random id)")] = None,
    job_id: Annotated[Optional[int], typer.Option(help="the session's job id on a free host")] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens per answer at most")] = 256,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.7,
) -> int:
    from fabstir.cli.chat import run_chat

    fallback_host = list(fallback_host or [])
    return asyncio.run(run_chat(argparse.Namespace(**locals())))


def hosts(
    network: Annotated[Optional[str], typer.Option(metavar="FILE", help="network file: read the on-chain registry (prices and "
                                                        "stake from chain)")] = None,
    discovery_url: Annotated[Optional[str], typer.Option(metavar="URL", help="an HTTP discovery service (fabstir discovery "
                                                              "serve)")] = None,
    mdns: Annotated[bool, typer.Option("--mdns", help="browse mDNS on 127.0.0.1")] = False,
    dht_bootstrap: Annotated[Optional[str], typer.Option(metavar="HOST:PORT,...", help="search the DHT, joining through "
                                                              "host:port[,host:port...]")] = None,
    model: Annotated[Optional[str], typer.Option(metavar="MODEL", help="only hosts serving this model (repo/file, 0x id, or a "
                                                      "served name)")] = None,
    strategy: Annotated[str, typer.Option(metavar="NAME", help="how to choose the host marked as chosen: cheapest, fastest, "
                                               "reputable, composite, round_robin", callback=_strategy)] = "composite",
    max_price: Annotated[Optional[int], typer.Option(help="highest price per token (x1000, base units)")] = None,
    capability: Annotated[Optional[list[str]], typer.Option(metavar="NAME", help="required capability (repeatable)")] = None,
    region: Annotated[Optional[str], typer.Option(metavar="REGION", help="required region")] = None,
    no_ping: Annotated[bool, typer.Option("--no-ping", help="do not measure each host's round trip")] = False,
    timeout: Annotated[float, typer.Option(help="seconds each source may take")] = 3.0,
    json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")] = False,
) -> int:
    from fabstir.cli.hosts import run_hosts

    capability = list(capability or [])
    return asyncio.run(run_hosts(argparse.Namespace(**locals())))


NetworkOption = Annotated[str, typer.Option(metavar="FILE", help="network file (fabstir devnet up writes one)")]
DepositorOption = Annotated[Optional[str], typer.Option(metavar="ADDRESS", help="address to look up (default: the client key's, "
                                                              "$FABSTIR_CLIENT_KEY)")]
AccountOption = Annotated[Optional[str], typer.Option(metavar="NAME", help="a named account of the network file (development "
                                                           "networks)")]
JsonOption = Annotated[bool, typer.Option("--json", help=JSON_HELP)]


def sessions(network: NetworkOption, depositor: DepositorOption = None, account: AccountOption = None,
             json: JsonOption = False) -> int:
    from fabstir.cli.spending import run_spending

    return asyncio.run(run_spending(argparse.Namespace(command="sessions", **locals())))


def spend(network: NetworkOption, depositor: DepositorOption = None, account: AccountOption = None,
          json: JsonOption = False) -> int:
    from fabstir.cli.spending import run_spending

    return asyncio.run(run_spending(argparse.Namespace(command="spend", **locals())))


def discovery_serve(
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0 picks a free one)")] = 8090,
    max_hosts: Annotated[int, typer.Option(help="live hosts held")] = 1000,
    json: Annotated[bool, typer.Option("--json", help="when serving, print {\"url\": ...} as one JSON line on "
                                                      "stdout")] = False,
) -> int:
    from fabstir.cli.discovery import run_discovery_serve

    return asyncio.run(run_discovery_serve(argparse.Namespace(**locals())))
