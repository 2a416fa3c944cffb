"""Human-facing output helpers: everything human goes to stderr, data goes to stdout."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import warnings
from collections.abc import Iterator
from typing import IO, NoReturn, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def stderr_console() -> Console:
    """A Rich console on stderr (progress, tables, logs). Log lines are not wrapped, so a piped
    log keeps one line per message."""
    return Console(stderr=True, soft_wrap=True)


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def failed_writing_stdout(error: OSError) -> bool:
    """True when ``error`` was raised by a write to (or flush of) stdout: the innermost frame of its
    traceback holds stdout, its byte buffer, or a Rich console on stdout."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    streams = (sys.stdout, sys.__stdout__)
    targets = {id(s) for s in (*streams, *(getattr(s, "buffer", None) for s in streams)) if s is not None}
    for value in tb.tb_frame.f_locals.values():
        if id(value) in targets or (isinstance(value, Console) and id(value.file) in targets):
            return True
    return False


def exit_on_stdout_error(error: OSError) -> NoReturn:
    """Exit 1 after stdout failed: one ``Error:`` line on stderr (none for a closed pipe such as
    ``| head -1``, whose reader wanted no more). The unwritten rest goes to the null device, so the
    interpreter's flush at exit does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    if error.errno != errno.EPIPE:
        with contextlib.suppress(OSError):
            stderr_console().print(
                f"[bold red]Error:[/] Cannot write to standard output: {escape(error.strerror or str(error))}. "
                "Free disk space or send the output elsewhere.",
                highlight=False,
                soft_wrap=True,
            )
    sys.exit(1)


def make_progress(console: Console | None = None, unit: str = "clips") -> Progress:
    """A progress bar with count, rate (``unit``/s) and ETA. Quiet when stderr is not a terminal."""
    console = console or stderr_console()
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=False,
    )


def rate_text(done: float, seconds: float, unit: str = "clips") -> str:
    return f"{done / seconds:.1f} {unit}/s" if seconds > 0 else ""


@contextlib.contextmanager
def show_warnings(console: Console, category: type[Warning] = UserWarning) -> Iterator[None]:
    """Inside, show each warning of ``category`` as one ``Warning: ...`` line on ``console``.

    Other warnings and the warning filters are left as they were (``-W error::...`` still
    raises); everything is restored on exit.
    """
    shown = category
    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:  # fmt: skip
            if issubclass(category, shown):
                console.print(f"[yellow]Warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield
