"""What the ``fabstir`` command prints: rich tables, JSON for scripts, progress bars for long work.

On a terminal, tables have borders and colour and progress is a live bar on stderr. When the output is
not a terminal (a pipe, a file, a test), it stays parseable: tables are plain aligned columns without
colour codes or trailing spaces, JSON is always one line, and progress is a plain ``[fabstir] ...`` line
on stderr when a task starts (no bar redraws).

Long work elsewhere in the package reports through :data:`StepCallback` (``done, total, label``); the
CLI turns it into a bar with :func:`progress_bar`. A library that generates keys, unpacks or deploys
takes such a callback and the CLI passes the one :func:`progress_bar` yields. Work that reports a line
per step instead (``progress: Callable[[str], None]``, as proof key generation does) gets a bar from
:func:`progress_lines`, one step per line.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

__all__ = ["StepCallback", "console", "is_terminal", "key_value_table", "print_json", "print_table", "progress_bar",
           "progress_lines", "say", "table"]

StepCallback = Callable[[int, int, str], None]
"""``(done, total, label)``: how far a long task has come (``label`` names the current step; may be ``""``)."""

PLAIN_WIDTH = 400
"""Width tables are laid out in when the output is not a terminal (wide enough that nothing wraps)."""


def console(*, stderr: bool = False) -> Console:
    """A console on the current ``sys.stdout`` (or ``sys.stderr``): colour only on a terminal, no markup."""
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def is_terminal(*, stderr: bool = False) -> bool:
    return console(stderr=stderr).is_terminal


def say(text: str) -> None:
    """A progress note on stderr (``[fabstir] text``), as every command prints them."""
    print(f"[fabstir] {text}", file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    """``value`` as one line of JSON on stdout (never wrapped, never coloured)."""
    print(json.dumps(value, separators=(",", ":")), flush=True)


def table(*columns: str, title: str | None = None, right: Sequence[str] = ()) -> Table:
    """A table with these column headers; columns named in ``right`` are right-aligned (numbers)."""
    result = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", header_style="bold")
    for name in columns:
        result.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return result


def key_value_table(rows: Sequence[tuple[str, str]], *, title: str | None = None, key_width: int = 18) -> Table:
    """Two columns, a label and its value, with no header: the shape of a summary or a receipt."""
    result = Table(title=title, box=None, show_header=False, title_justify="left", pad_edge=False,
                   padding=(0, 1, 0, 0))
    result.add_column(min_width=key_width, style="bold")
    result.add_column()
    for key, value in rows:
        result.add_row(key, value)
    return result


def print_table(rendered: Table, *, stderr: bool = False) -> None:
    """Print ``rendered``: boxed on a terminal; plain aligned columns otherwise (no colour, no trailing spaces).

    The title is a line of its own above the table (rich would wrap it to the table's width).
    """
    target = console(stderr=stderr)
    title, rendered.title = rendered.title, None
    if target.is_terminal:
        if title:
            target.print(title, style="bold", markup=False)
        target.print(rendered)
        return
    if rendered.box is not None:
        rendered.box = None
        rendered.pad_edge = False
    buffer = io.StringIO()
    Console(file=buffer, width=PLAIN_WIDTH, color_system=None, highlight=False, force_terminal=False,
            soft_wrap=False).print(rendered)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    stream = sys.stderr if stderr else sys.stdout
    print("\n".join([str(title), *lines] if title else lines), file=stream, flush=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, *, unit: str = "steps") -> Iterator[StepCallback]:
    """A bar on stderr while the block runs; yields the :data:`StepCallback` that moves it.

    ``unit="bytes"`` shows sizes. Safe to call from worker threads. When stderr is not a terminal the bar
    is one ``[fabstir] description`` line and the callback draws nothing.
    """
    err = console(stderr=True)
    if not err.is_terminal:
        say(description)
        yield lambda done, total, label: None
        return
    amount = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), TaskProgressColumn(), amount,
                  TimeElapsedColumn(), TextColumn("{task.fields[step]}"), console=err, transient=False) as bar:
        task = bar.add_task(description, total=total, step="")

        def advance(done: int, new_total: int, label: str) -> None:
            bar.update(task, completed=done, total=new_total or None, step=label)

        yield advance
        current = bar.tasks[0]
        if current.total is not None:
            bar.update(task, completed=current.total, step="done")


@contextlib.contextmanager
def progress_lines(description: str, steps: int) -> Iterator[Callable[[str], None]]:
    """A bar of ``steps`` steps that moves one step per line given to the yielded callback (which shows the line).

    For work that reports a line per long step. When stderr is not a terminal each line is printed as
    ``[fabstir] line``, as before there were bars.
    """
    if not is_terminal(stderr=True):
        yield say
        return
    with progress_bar(description, steps) as advance:
        done = 0

        def line(text: str) -> None:
            nonlocal done
            done = min(done + 1, steps)
            advance(done, steps, text)

        yield line
