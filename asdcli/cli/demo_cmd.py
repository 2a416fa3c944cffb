"""`asd demo`: not implemented yet."""

from __future__ import annotations

import typer


def command() -> None:
    """Run the whole pipeline on a synthetic dataset with a tiny random model."""
    typer.echo("asd demo: not implemented yet", err=True)
    raise typer.Exit(2)
