"""The ``fabstir`` command (typer + rich): ``demo``, ``chat``, ``hosts``, ``sessions``, ``spend``, ``node ...``,
``discovery serve``, ``gateway``, ``devnet ...``, ``proofs``, ``verify``, ``dispute ...``.

``main(argv)`` returns the exit code; failures print one line (``error: CODE: message``) on stderr, never a
traceback: exit 1 for a coded error, 2 for a usage error (``error: USAGE: ...``), 130 when interrupted.
Each command module registers its options on :data:`app`; the work is imported when a command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer
from typer._click.exceptions import ClickException, UsageError

from fabstir import __version__
from fabstir.cli import commands_client, commands_devnet, commands_node, disputes, gateway, proofs, verify
from fabstir.errors import FabstirError

__all__ = ["app", "main", "run"]

app = typer.Typer(name="fabstir", help="Decentralized LLM inference: SDK and host node. Tables on a terminal, "
                                       "plain columns in a pipe; --json where a script wants data.",
                  no_args_is_help=True, add_completion=False, context_settings={"help_option_names": ["-h", "--help"]},
                  pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        print(f"fabstir {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """Decentralized LLM inference: SDK and host node."""


commands_client.register(app)
commands_node.register(app)
gateway.register(app)
commands_devnet.register(app)
proofs.register(app)
verify.register(app)
disputes.register(app)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="fabstir",
                              standalone_mode=False)
    except FabstirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "fabstir"
        print(f"error: USAGE: {exc.format_message()} (see: {where} --help)", file=sys.stderr)
        return 2
    except ClickException as exc:
        print(f"error: USAGE: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        return 130
    if result == 130:  # typer turns KeyboardInterrupt into exit code 130
        print("interrupted", file=sys.stderr)
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
