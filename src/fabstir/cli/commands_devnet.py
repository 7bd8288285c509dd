"""``fabstir devnet up | status | down``: a whole local marketplace for development.

Only the options live here; the work (:mod:`fabstir.cli.devnet`) is imported when a command runs.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Optional

import typer

__all__ = ["register"]

FileOption = Annotated[str, typer.Option(metavar="FILE", help="the network file")]
JsonOption = Annotated[bool, typer.Option("--json", help="print the outcome as one line of JSON")]


def register(app: typer.Typer) -> None:
    """Add ``fabstir devnet ...`` to the root app."""
    devnet = typer.Typer(help="a local marketplace: anvil with the contracts, a discovery service and hosts",
                         no_args_is_help=True)
    devnet.command("up", help="start anvil, deploy, fund accounts, start a discovery service and hosts, write a "
                              "network file")(up)
    devnet.command("status", help="what the devnet of a network file is running")(status)
    devnet.command("down", help="stop the hosts, the discovery service and the anvil started by 'up'")(down)
    app.add_typer(devnet, name="devnet")


def _run(command: str, values: dict[str, object]) -> int:
    from fabstir.cli.devnet import run_devnet

    return run_devnet(argparse.Namespace(devnet_command=command, **values))


def up(
    file: Annotated[str, typer.Option(metavar="FILE", help="network file to write")] = "devnet.json",
    port: Annotated[int, typer.Option(help="anvil port on 127.0.0.1 (0: a free one)")] = 0,
    dispute_window: Annotated[int, typer.Option(help="seconds before a host may settle after its last "
                                                     "checkpoint")] = 30,
    models: Annotated[Optional[list[str]], typer.Option("--model", metavar="REPO/FILE",
                                                        help="approve this model; repeat for several")] = None,
    hosts: Annotated[int, typer.Option(help="host nodes to start, registered at different prices, with a discovery "
                                            "service (0: the chain alone)")] = 2,
    host_model: Annotated[Optional[str], typer.Option(metavar="FILE", help="GGUF file the hosts serve (default: the default "
                                                           "model)")] = None,
    checkpoint_proofs: Annotated[bool, typer.Option(
        "--checkpoint-proofs", help="also deploy the EZKL checkpoint-proof verifier, and have the hosts prove "
                                    "their checkpoints on chain (needs the proofs extra: ezkl, onnx)")] = False,
    json: Annotated[bool, typer.Option("--json", help="print the devnet (RPC URL, contracts, accounts, services) "
                                                      "as one JSON line on stdout instead of the summary")] = False,
) -> int:
    return _run("up", locals())


def status(file: FileOption = "devnet.json", json: JsonOption = False) -> int:
    return _run("status", locals())


def down(file: FileOption = "devnet.json", json: JsonOption = False) -> int:
    return _run("down", locals())
