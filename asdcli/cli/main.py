"""The `asd` Typer app: registers every stage command and renders AsdError once."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from asdcli import __version__
from asdcli.cli.process_exit import exit_code_of, exit_without_teardown, reopen_closed_std_streams
from asdcli.cli.usage import AsdCommand, AsdGroup
from asdcli.console import show_warnings, stderr_console
from asdcli.errors import AsdError, AsdWarning

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="asd",
    help=(
        "First-shot unsupervised anomalous sound detection for machine condition monitoring "
        "(DCASE 2025 Task 2).\n\n"
        "Pipeline: finetune (BEATs + LoRA) -> embed -> fit-bank -> score -> report. "
        "Each stage reads and writes files, so it can run alone; `asd run DATA` runs them all in one "
        "resumable run folder. Try `asd demo` first (no downloads)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain help: wraps at words, survives a pipe
    cls=AsdGroup,
)


def handle_errors(fn: F) -> F:
    """Render AsdError as one `Error: ...` line on stderr and exit 1, each AsdWarning as one
    `Warning: ...` line (an `Error: ...` line when ``-W error::asdcli.errors.AsdWarning`` makes it
    fatal); Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with show_warnings(stderr_console(), AsdWarning):
                return fn(*args, **kwargs)
        except (AsdError, AsdWarning) as e:
            stderr_console().print(f"[bold red]Error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            stderr_console().print("[yellow]Interrupted.[/] Finished artifacts are kept; re-run to continue.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"asd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """First-shot unsupervised anomalous sound detection (DCASE 2025 Task 2)."""


def _register() -> None:
    from asdcli.cli import (
        bank_cmd,
        demo_cmd,
        embed_cmd,
        enrol_cmd,
        export_cmd,
        finetune_cmd,
        fuse_cmd,
        package_cmd,
        report_cmd,
        run_cmd,
        score_cmd,
        watch_cmd,
    )

    for name, module in (
        ("finetune", finetune_cmd),
        ("embed", embed_cmd),
        ("fit-bank", bank_cmd),
        ("score", score_cmd),
        ("report", report_cmd),
        ("fuse", fuse_cmd),
        ("run", run_cmd),
        ("demo", demo_cmd),
        ("package", package_cmd),
        ("watch", watch_cmd),
        ("enrol", enrol_cmd),
        ("export", export_cmd),
    ):
        app.command(name, cls=AsdCommand)(handle_errors(module.command))


_register()


def main() -> None:
    """The `asd` entry point: runs the app, then ends the process without the interpreter's
    teardown (see process_exit)."""
    reopen_closed_std_streams()
    try:
        app(prog_name="asd")
    except SystemExit as e:
        exit_without_teardown(exit_code_of(e))
    exit_without_teardown(0)


if __name__ == "__main__":
    main()
    sys.exit(0)
